"""The template every benchmark method follows (:class:`Method`), its registry, and what the whole-model
baselines share (:class:`WholeModelMethod`).

Mammoth-style contract: ``begin_task(task_id, classes, n_train=None)``, ``observe(x, y) -> dict``,
``end_task()``, ``logits(x)``. Outputs are in *output-index* space: class ``c`` gets output
``to_index(c)`` in order of arrival (the one class map, :mod:`.classes`), so TIL and CIL come from one set
of logits by masking (``task_indices(t)`` / ``seen_indices()``), for every method alike. The public
contract is final; a method implements hooks that return a :class:`Step` (what it trained, what it only
forwarded), and the template keeps the two ledgers the suite reports:

* ``flops``: training FLOPs by the paper's counting (see :func:`forward_flops`): a sample that
  only goes *forward* through a part costs 1x that part's forward FLOPs; a sample that is
  *trained* through a part costs 3x (forward + backward for activations and weights). Only
  conv and linear layers count (2 FLOPs per multiply-add); BN, ReLU, pooling and the optimiser
  update are left out. Evaluation is not training and is not counted. No method touches this ledger:
  it declares its parts (:meth:`Method.declare_part`) and reports sample counts.
* ``accounting()`` (each method's): element counts for the paper's theoretical memory (fp32): weights held,
  trainable weights (= gradients), optimiser slots, extra state (EWC's Fisher, LwF's teacher, ...),
  activations of one step (batch + replayed samples, leaf-module outputs, via
  :func:`lightcl.bench.accounting.count_activations`) and the replay buffer.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightcl.engine.classifier import fresh_classifier
from lightcl.engine.errors import InputError, LightCLError
from lightcl.engine.losses import sliced_cross_entropy
from lightcl.engine.reservoir import Reservoir  # noqa: F401  (the one reservoir rule; methods import it here)

from .classes import MethodClasses
from .configs import WholeModelConfig, make_config


def _default_input_shape() -> tuple[int, int, int]:
    from lightcl.export.zoo import DEFAULT_INPUT_SIZE

    return tuple(DEFAULT_INPUT_SIZE)


class MethodNotApplicable(LightCLError):
    """The method cannot run on this backbone (e.g. no block it knows how to sparsify): the suite records
    it as not applicable, with this line as the reason, and runs the others."""

    exit_code = 2


@dataclass
class MethodContext:
    """What a method needs to build itself: the same pretrained start for every method."""

    scenario: Any  # bench.scenarios.Scenario
    ckpt: str | None  # pretrained backbone checkpoint (PATH of PATH.safetensors + PATH.json); None: composed
    # from the export (``lightcl bench update`` has only the export)
    export_dir: str | None  # the split export of that checkpoint (engine methods)
    num_classes: int
    seed: int = 0
    # the callers pass the export's ``input_shape``; the default is the zoo's (one place, export/zoo.py)
    input_shape: tuple[int, int, int] = field(default_factory=_default_input_shape)
    backend: str = "ort"  # extractor backend for engine methods
    threads: int | None = None
    device: str = "cpu"
    extra: dict = field(default_factory=dict)
    # an extractor already opened by the caller (``lightcl bench update`` meters its load on its own);
    # None: engine methods open the export's frozen part themselves
    extractor: Any = None

    @property
    def batch_size(self) -> int:
        return int(self.scenario.batch_size)


def compose_backbone(export_dir: str | Path):
    """The whole pretrained model, rebuilt from an export's ``frozen.safetensors`` + ``head.safetensors``
    (their block specs, so a pruned export composes to its pruned backbone). Returns (model, split index, meta)."""
    from lightcl.engine.blocks import build_block
    from lightcl.engine.export_dir import export_file, load_export_meta, load_head
    from lightcl.engine.frozen import load_frozen
    from lightcl.export.zoo import Backbone

    meta = load_export_meta(export_dir)
    frozen, _ = load_frozen(export_file(export_dir, meta, "frozen.safetensors"))
    head = load_head(export_dir)
    named = [(s["name"], build_block(s)) for s in frozen.specs] + [(b["name"], build_block(b))
                                                                    for b in head.config["blocks"]]
    # the export names its arch (the head config too); exports older than the zoo held only ResNet-18
    arch = meta.get("arch") or head.config.get("arch") or "resnet18"
    model = Backbone(arch, named, feat_dim=head.fc.in_features, num_classes=head.num_classes,
                     width=int(meta["width"]), input_size=tuple(meta["input_shape"]))
    k = len(frozen.blocks) - 1
    for i, b in enumerate(frozen.blocks):
        model.blocks[i].load_state_dict(b.state_dict())
    for j, b in enumerate(head.blocks):
        model.blocks[k + 1 + j].load_state_dict(b.state_dict())
    model.fc.load_state_dict(head.fc.state_dict())
    return model, k, meta


def pretrained_backbone(ctx: MethodContext):
    """(model, metadata) of the pretrained start: the checkpoint ``ctx.ckpt``, else composed from ``ctx.export_dir``."""
    if ctx.ckpt:
        from lightcl.export.checkpoint import load_checkpoint

        return load_checkpoint(ctx.ckpt)
    if not ctx.export_dir:
        raise InputError("this method needs a checkpoint or an export directory")
    model, _, meta = compose_backbone(ctx.export_dir)
    return model, meta


def forward_flops(module: nn.Module, x: Tensor, forward=None) -> float:
    """Forward FLOPs *per sample* of ``module`` on ``x`` (conv + linear, 2 per multiply-add)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += 2 * out.numel() * k

    def lin_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += 2 * out.numel() * m.in_features

    hooks = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    was = module.training
    try:
        module.eval()
        with torch.no_grad():
            (forward or module)(x)
    finally:
        module.train(was)
        for h in hooks:
            h.remove()
    return total / x.shape[0]


def per_layer_cost(net: nn.Module, x: Tensor) -> dict[str, float]:
    """Forward FLOPs per sample of every conv/linear module (2 per multiply-add), by module name."""
    out: dict[str, float] = {}
    hooks = []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            def h(mod, _i, o, name=name):
                k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
                out[name] = 2.0 * o.numel() * k / x.shape[0]
            hooks.append(m.register_forward_hook(h))
        elif isinstance(m, nn.Linear):
            def h(mod, _i, o, name=name):
                out[name] = 2.0 * o.numel() * mod.in_features / x.shape[0]
            hooks.append(m.register_forward_hook(h))
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(x)
    finally:
        net.train(was)
        for hk in hooks:
            hk.remove()
    return out


def masked_cost(per_layer: Mapping[str, float], masks: Mapping[str, Tensor],
                module_of: Mapping[str, str]) -> float:
    """Forward FLOPs per sample with each masked weight's layer at its mask's density (``per_layer`` from
    :func:`per_layer_cost`; ``module_of``: weight name -> its layer's name): SparCL's counting."""
    dense = sum(per_layer.values())
    saved = sum(per_layer[module_of[n]] * (1.0 - float(m.mean())) for n, m in masks.items())
    return dense - saved


def n_params(params) -> int:
    return int(sum(p.numel() for p in params))


@dataclass
class Step:
    """What one step (or a task boundary) did, as a method reports it: the template turns it into FLOPs.

    ``trained``: samples that went forward *and* backward through a part (3x its forward cost);
    ``forwarded``: samples that only went forward through a part (1x). Each is ``{part: samples}`` over the
    parts the method declared (:meth:`Method.declare_part`), or a plain count for its ``main_part``.
    ``metrics``: the step's figures (``loss`` ...), returned by ``observe``. ``update``: whether an update
    step happened (counted in ``steps``; SparCL's batch emptied by data removal is none).
    """

    metrics: dict = field(default_factory=dict)
    trained: Mapping[str, int] | int = 0
    forwarded: Mapping[str, int] | int = 0
    update: bool = True


@dataclass
class Batch:
    """One training batch as a method's ``train_step`` sees it: ``x`` as given, ``labels`` as given,
    ``y`` the labels' output columns (through the one class map; an unannounced label was refused already)
    on the method's device, ``ids`` the batch's dataset indices (only for a method with ``wants_ids``)."""

    x: Tensor
    labels: Any
    y: Tensor
    ids: Tensor | None = None


# name -> method class, filled by @register_method as each module of this package is imported
REGISTRY: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: put a :class:`Method` subclass in the registry under its ``name`` (timm-style).
    The class must declare ``name``, ``summary`` and ``config_class``; a name is registered once."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"@register_method needs a Method subclass, got {cls!r}")
    missing = [a for a in ("name", "summary") if getattr(cls, a, "?") in ("?", "", None)]
    if missing or cls.config_class is None:
        raise TypeError(f"{cls.__name__}: declare {', '.join(missing + (['config_class'] if cls.config_class is None else []))}")
    other = REGISTRY.get(cls.name)
    if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"method name {cls.name!r} is taken by {other.__module__}.{other.__qualname__}")
    REGISTRY[cls.name] = cls
    return cls


class Method:
    """The template every benchmark method follows (after Mammoth's ``meta_observe``).

    The public contract, ``begin_task`` / ``observe`` / ``end_task`` / ``to_index`` / ``task_indices`` /
    ``seen_indices``, is final (a subclass that overrides it is refused at class creation): those wrappers map
    labels through the one class map (``self.classes``), count steps and keep the FLOP ledger (``flops``) from
    the :class:`Step` each hook returns. A method implements the hooks:

    * ``train_step(batch) -> Step`` (required): one update on a :class:`Batch`;
    * ``on_begin_task(task_id, classes, n_train)`` and ``on_end_task(x) -> Step | None`` (optional);
    * ``logits(x)`` and ``accounting()`` (required), ``describe()`` (optional);

    and declares on the class: ``name``, ``summary`` (one line), ``config_class`` (its typed hyperparameters,
    ``self.config``), ``trains`` (for the report), ``cost`` (relative step cost, for the ETA only), and its
    compatibility: ``til_only`` (task-incremental only: CIL is reported "n/a"), ``wants_fresh_batch``
    (``end_task`` gets a freshly drawn full batch of the task), ``wants_ids`` (``observe`` gets the batch's
    dataset indices), ``needs_export`` (runs the split export through the engine's extractor). Register it
    with ``@register_method``; docs/extending.md walks through a whole method.
    """

    name: str = "?"
    summary: str = ""
    config_class: type | None = None
    trains = "?"
    cost = 1.0
    til_only = False
    wants_fresh_batch = False
    wants_ids = False
    needs_export = False
    task_free = False  # learns without task boundaries: the only kind a blurry scenario runs
    main_part = "model"  # the part a plain sample count in a Step refers to

    FINAL = ("begin_task", "observe", "end_task", "to_index", "task_indices", "seen_indices")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        bad = [m for m in Method.FINAL if m in vars(cls)]
        if bad:
            raise TypeError(f"{cls.__name__} overrides {', '.join(bad)}: implement the hooks (train_step, "
                            "on_begin_task, on_end_task) instead; the public contract is the template's")

    def __init__(self, ctx: MethodContext, **hp: Any) -> None:
        self.ctx = ctx
        self.hp = dict(hp)
        # the typed config: the one source of this method's defaults; an unknown key or a wrong type is one line
        self.config = make_config(self.name, self.hp, cls=self.config_class)
        self.device = torch.device(ctx.device)
        self.generator = torch.Generator().manual_seed(int(ctx.seed))
        torch.manual_seed(int(ctx.seed))
        self.classes = MethodClasses(ctx.num_classes)  # engine methods: the learner's own (LearnerClasses)
        self.current_task: int | None = None
        self.flops = 0.0
        self.steps = 0
        self.part_flops: dict[str, float] = {}

    @classmethod
    def not_applicable(cls, model: nn.Module) -> str | None:
        """Why this method cannot run on the pretrained ``model`` (a ``Backbone``), or None (the default: it
        can). The suite asks before starting any worker and records the reason instead of a failure."""
        return None

    @classmethod
    def prepare(cls, ckpt: str, split: str, hyperparameters: dict, echo=print, progress: bool = False) -> Any:
        """Build shared, cached artefacts before the suite's workers start (default: none)."""
        return None

    # --- the cost ledger: parts and their forward cost per sample
    def declare_part(self, part: str, module: nn.Module | None = None, input_shape: Sequence[int] | None = None,
                     *, per_sample: float | None = None, forward=None) -> float:
        """Name a part the method's samples go through and its forward cost per sample: measured on
        ``module`` with a probe of ``input_shape`` (default: the scenario's images), or given as ``per_sample``.
        Declaring a part again replaces its cost (SparCL's masks change it)."""
        if per_sample is None:
            shape = tuple(input_shape) if input_shape is not None else tuple(self.ctx.input_shape)
            per_sample = forward_flops(module, torch.zeros(2, *shape, device=self.device), forward=forward)
        self.part_flops[part] = per_sample
        return per_sample

    def _account(self, step: Step | None) -> dict:
        if step is None:
            return {}
        for counts, factor in ((step.trained, 3.0), (step.forwarded, None)):
            if isinstance(counts, int):
                counts = {self.main_part: counts} if counts else {}
            for part, n in counts.items():
                if not n:
                    continue
                if part not in self.part_flops:
                    raise KeyError(f"{self.name}: part {part!r} was never declared (declare_part)")
                f = self.part_flops[part]
                self.flops += factor * f * n if factor is not None else f * n
        return step.metrics

    # --- the public contract (final)
    def begin_task(self, task_id: int, classes: Sequence, n_train: int | None = None) -> None:
        if self.current_task is not None:
            raise InputError(f"task {self.current_task} is still open")
        classes = self.classes.open(int(task_id), classes)  # checked names (str or int)
        self._account(self.on_begin_task(int(task_id), classes, n_train))
        self.current_task = int(task_id)

    def observe(self, x: Tensor, y, ids: Tensor | None = None) -> dict:
        if self.current_task is None:
            raise InputError("no open task: call begin_task first")
        if ids is not None and not self.wants_ids:
            ids = None
        step = self.train_step(Batch(x, y, self.classes.index(y).to(self.device), ids))
        if step.update:
            self.steps += 1
        return self._account(step)

    def end_task(self, x: Tensor | None = None) -> None:
        """``x``: a freshly drawn full batch of the task, for a method with ``wants_fresh_batch`` (else ignored)."""
        if self.current_task is None:
            raise InputError("no open task to end")
        self._account(self.on_end_task(x if self.wants_fresh_batch else None))
        self.current_task = None

    def to_index(self, y) -> Tensor:
        """Output column of each label (the evaluation's targets), on the method's device."""
        return self.classes.index(y).to(self.device)

    def task_indices(self, task_id: int) -> list[int]:
        return self.classes.task_columns(task_id)

    def seen_indices(self) -> list[int]:
        return self.classes.seen_columns()

    # --- the hooks
    def on_begin_task(self, task_id: int, classes: list, n_train: int | None) -> Step | None:
        """A task opens (its classes are in the map already). ``n_train``: its training set's size, if known."""
        return None

    def train_step(self, batch: Batch) -> Step:
        raise NotImplementedError

    def on_end_task(self, x: Tensor | None) -> Step | None:
        """The task closes (``x``: the fresh batch, for ``wants_fresh_batch`` methods)."""
        return None

    def logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def accounting(self) -> dict:
        """Element counts: weights, trainable, optimizer_slots, extra_state, activations, buffer."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"method": self.name, "trains": self.trains, "hyperparameters": dict(self.hp)}


class WholeModelMethod(Method):
    """The whole pretrained backbone with a fresh classifier, trained end to end (Mammoth-style).

    Loss: cross-entropy over *all* outputs, as Mammoth's baselines compute it (unseen classes'
    logits are pushed down; they are masked away at evaluation). Train mode while learning, eval
    mode for ``logits``. Optimiser: SGD(lr, momentum, weight_decay) from the typed config.
    """

    trains = "whole model"
    config_class = WholeModelConfig

    def __init__(self, ctx: MethodContext, **hp: Any) -> None:
        super().__init__(ctx, **hp)
        model, self.ckpt_meta = pretrained_backbone(ctx)
        model.fc = fresh_classifier(model.fc.in_features, ctx.num_classes, self.generator)
        self.net = model.to(self.device)
        self.net.train()
        self.optimizer = self.make_optimizer(self.net.parameters())
        self.declare_part("model", self.net)

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def optimizer_slots(self) -> int:
        return 1 if self.config.momentum > 0 else 0

    def drop_gradients(self) -> None:
        """Drop the previous step's gradients before the forward (the canonical zero_grad, forward, backward, step
        loop): kept until ``step`` they sit beside the forward's activations at the peak (+42.6 MiB of measured
        peak at width 64, docs/results/ledger.md pass 3). Same numbers either way: ``step`` zeroes again."""
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        was = self.net.training
        self.net.eval()
        try:
            return self.net(x.to(self.device))
        finally:
            self.net.train(was)

    def replayed_per_step(self) -> int:
        return 0

    def extra_state(self) -> int:
        return 0

    def buffer_numel(self) -> int:
        return 0

    def accounting(self) -> dict:
        from lightcl.bench.accounting import count_activations

        n = self.ctx.batch_size + self.replayed_per_step()
        params = n_params(self.net.parameters())
        acts = count_activations(self.net, torch.zeros(n, *self.ctx.input_shape, device=self.device))
        return {"weights": params, "trainable": params, "optimizer_slots": self.optimizer_slots(),
                "extra_state": self.extra_state(), "activations": acts, "buffer": self.buffer_numel(),
                "samples_per_step": n}

    def ce(self, out: Tensor, y_idx: Tensor, columns: Sequence[int] | Tensor | None = None) -> Tensor:
        """Cross-entropy over every output (Mammoth's baselines), or over ``columns`` only (the engine's
        :func:`~lightcl.engine.losses.sliced_cross_entropy`; ``y_idx`` are full-logit column indices)."""
        if columns is None:
            return F.cross_entropy(out, y_idx)
        return sliced_cross_entropy(out, y_idx, columns)


def frozen_copy(net: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off (teachers, EWC anchors)."""
    c = copy.deepcopy(net)
    c.eval()
    for p in c.parameters():
        p.requires_grad_(False)
    return c
