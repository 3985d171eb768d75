"""The one contract every benchmark method implements, and what the whole-model baselines share.

Mammoth-style: ``begin_task(task_id, classes, n_train=None)``, ``observe(x, y) -> dict``,
``end_task()``, ``logits(x)``. Outputs are in *output-index* space: class ``c`` gets output
``class_index[c]`` in order of arrival, so TIL and CIL come from one set of logits by masking
(``task_indices(t)`` / ``seen_indices()``), for every method alike.

Every method also keeps two ledgers the suite reports:

* ``flops``: training FLOPs by the paper's counting (see :func:`forward_flops`): a sample that
  only goes *forward* through a part costs 1x that part's forward FLOPs; a sample that is
  *trained* through a part costs 3x (forward + backward for activations and weights). Only
  conv and linear layers count (2 FLOPs per multiply-add); BN, ReLU, pooling and the optimiser
  update are left out. Evaluation is not training and is not counted.
* ``accounting()``: element counts for the paper's theoretical memory (fp32): weights held,
  trainable weights (= gradients), optimiser slots, extra state (EWC's Fisher, LwF's teacher, ...),
  activations of one step (batch + replayed samples, leaf-module outputs, via
  :func:`lightcl.bench.accounting.count_activations`) and the replay buffer.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightcl.engine.classifier import fresh_classifier
from lightcl.engine.classmap import ClassMap
from lightcl.engine.errors import InputError, LightCLError
from lightcl.engine.losses import sliced_cross_entropy
from lightcl.engine.reservoir import Reservoir  # noqa: F401  (the one reservoir rule; methods import it here)

from .configs import make_config


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


def n_params(params) -> int:
    return int(sum(p.numel() for p in params))


class Method:
    """Base: class bookkeeping, FLOP ledger, the contract. Subclasses implement the learning."""

    name = "?"
    trains = "?"  # what is trained, for the report
    # relative cost of one step (sgd on the whole model = 1): only for the progress bar's ETA
    cost = 1.0

    def __init__(self, ctx: MethodContext, **hp: Any) -> None:
        self.ctx = ctx
        self.hp = dict(hp)
        # the typed config (bench/methods/configs.py): the one source of this method's defaults;
        # an unknown key or a wrong type is one InputError line
        self.config = make_config(self.name, self.hp)
        self.device = torch.device(ctx.device)
        self.generator = torch.Generator().manual_seed(int(ctx.seed))
        torch.manual_seed(int(ctx.seed))
        self.classes = ClassMap()  # the engine's class map: one rule for labels -> outputs, learner and methods
        self.current_task: int | None = None
        self.flops = 0.0
        self.steps = 0

    @classmethod
    def not_applicable(cls, model: nn.Module) -> str | None:
        """Why this method cannot run on the pretrained ``model`` (a ``Backbone``), or None (the default: it
        can). The suite asks before starting any worker and records the reason instead of a failure."""
        return None

    # --- hyperparameters
    def opt(self, key: str, default: Any = None) -> Any:
        """The hyperparameter ``key``: as given, else the typed config's default (``default`` only for a
        key the config does not have)."""
        if key in self.hp:
            return self.hp[key]
        return getattr(self.config, key, default)

    def check_hp(self, known: Sequence[str]) -> None:
        bad = sorted(set(self.hp) - set(known))
        if bad:
            raise InputError(f"{self.name}: unknown hyperparameter(s) {bad}; known: {sorted(known)}")

    # --- classes
    def begin_task(self, task_id: int, classes: Sequence[int], n_train: int | None = None) -> None:
        if self.current_task is not None:
            raise InputError(f"task {self.current_task} is still open")
        classes = self.classes.check_names([int(c) for c in classes])
        _ids, new = self.classes.ids_for_new_task(classes)
        if len(self.classes) + len(new) > self.ctx.num_classes:
            raise InputError(f"more than {self.ctx.num_classes} classes")
        self.classes.add_task(int(task_id), classes)
        self.current_task = int(task_id)

    def end_task(self) -> None:
        self.current_task = None

    @property
    def class_index(self) -> dict[int, int]:
        return self.classes.index

    @property
    def tasks(self) -> dict[int, list[int]]:
        return self.classes.tasks

    def task_indices(self, task_id: int) -> list[int]:
        return self.classes.task_columns(task_id)

    def seen_indices(self) -> list[int]:
        return self.classes.seen_columns()

    def to_index(self, y: Tensor) -> Tensor:
        return self.classes.columns(y.long().cpu()).to(self.device)

    # --- the rest of the contract
    def observe(self, x: Tensor, y: Tensor) -> dict:
        raise NotImplementedError

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

    def __init__(self, ctx: MethodContext, **hp: Any) -> None:
        super().__init__(ctx, **hp)
        model, self.ckpt_meta = pretrained_backbone(ctx)
        model.fc = fresh_classifier(model.fc.in_features, ctx.num_classes, self.generator)
        self.net = model.to(self.device)
        self.net.train()
        self.optimizer = self.make_optimizer(self.net.parameters())
        probe = torch.zeros(2, *ctx.input_shape, device=self.device)
        self.f_model = forward_flops(self.net, probe)

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
        self.steps += 1

    def train_flops(self, n: int) -> None:
        self.flops += 3.0 * self.f_model * n

    def forward_only_flops(self, n: int) -> None:
        self.flops += self.f_model * n

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
