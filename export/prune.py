"""Structured channel pruning at export time, physically: pruned channels leave every tensor.

The authors (github INV-WZQ/LightCL @ 62fda8b7, ``prune.py`` ``ChannelPruner``, ``LightCL.py
get_pruner``) keep the dense tensors and multiply them by 0/1 masks after every optimizer step, so
no byte is saved on a device. Here the same decisions remove output channels for real and follow
their dependencies through the zoo's ResNet:

* a conv's output channels go together with the BN after it (weight, bias, running statistics) and
  with the input channels of every conv that reads them (the block's second conv, the next block's
  first conv, a 1x1 shortcut conv) and with the classifier's input columns;
* residual adds couple channels: the stem (or a stage's first block with its 1x1 shortcut) and every
  identity-shortcut block after it write into one *residual group*, which must keep one common set
  of channels; a block's internal width (first conv -> second conv) is a group of its own.

The dependency graph is written for the zoo's two block types (``Stem``, ``BasicBlock``) below
(:func:`channel_groups`), not taken from Torch-Pruning: Torch-Pruning 1.6.1 installs from PyPI and
prunes this zoo correctly (checked), but the zoo is a flat list of two block types whose graph is
twenty lines, the authors' rule needs a custom importance and per-stage ratios anyway, and an own
graph keeps the export free of a tracing dependency. See docs/sparse.md.

Two modes:

* ``"authors"``: per-stage ratios of output channels removed (stem/layer1/layer2 0.2, layer3 0.7,
  layer4 0.8), filter importance = the *signed mean* of each filter's weights, and the number kept
  as the authors' code really keeps it: ``int(C * (1 - r) + 0.5) + 1`` (their ``kthvalue`` threshold
  with ``>=`` keeps one more than ``get_num_kernel_to_keep``). A residual group ranks channels by
  the mean of its producers' signed means.
* a number ``S`` in (0, 1): a global target weight sparsity (conv + classifier weights of the whole
  backbone). Every group loses the same fraction ``r`` of its channels, ``r`` the smallest that
  reaches ``S`` (bisection); importance = L1 norm of each filter (Li et al., "Pruning Filters for
  Efficient ConvNets", ICLR 2017), summed over a residual group's producers (DepGraph's group
  importance, Fang et al., CVPR 2023).

``round_channels=N`` (off by default, so ``"authors"`` keeps the authors' counts exactly) rounds every
group's kept count to a multiple of ``N`` (:func:`round_keep`), ranking by the same importance.
Why: onnxruntime's x86 CPU layout optimisation (the NCHWc transformer, block 8 on AVX2 and 16 on
AVX-512) converts only convolutions whose input channels are multiples of the block and pads their
output channels up to one; with the authors' counts at width 64 (52, 103, 78, 103) the pruned graph
runs 8 of its 15 convolutions on the generic path and pads the rest (docs/results/sparse-latency.md).
With a numeric ``S`` the bisection runs on the rounded counts, so ``S`` is still met.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lightcl.engine.blocks import BasicBlock, Stem
from lightcl.engine.errors import InputError

from .zoo import Backbone

AUTHORS_RATIOS: dict[str, float] = {"stem": 0.2, "layer1": 0.2, "layer2": 0.2, "layer3": 0.7, "layer4": 0.8}
"""Fraction of output channels removed per stage (INV-WZQ/LightCL @ 62fda8b7, LightCL.py get_pruner)."""
DEFAULT_RECOVER_EPOCHS = 2
"""Recovery fine-tune after pruning, in epochs over the checkpoint's pretraining data (0 = none)."""
RECOVER_LR = 0.05
RECOVER_SCHEDULE = "cosine"  # lr annealed from RECOVER_LR to 0 over the recovery (recorded in meta.json)


class PruneError(InputError):
    """A sparsity that cannot be applied (outside (0, 1), or it would empty a layer)."""


def parse_round_channels(value: Any) -> int | None:
    """``None`` (no rounding) or an int >= 1; anything else is a :class:`PruneError`. The upper bound
    depends on the model (:func:`plan_pruning`: at most its smallest channel group)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise PruneError(f"--round-channels must be an integer >= 1, got {value!r}")
    if not isinstance(value, int):
        try:
            import operator

            value = operator.index(value)  # numpy integers; floats and strings are refused
        except TypeError:
            raise PruneError(f"--round-channels must be an integer >= 1, got {value!r}") from None
    if value < 1:
        raise PruneError(f"--round-channels must be an integer >= 1, got {value!r}")
    return int(value)


def round_keep(k: int, size: int, n: int | None) -> int:
    """``k`` kept channels of a ``size``-channel group rounded to a multiple of ``n``: the nearest
    multiple (halves round up), at least ``n``, at most the largest multiple of ``n`` that fits in
    ``size``; a group kept whole (``k == size``) stays whole. ``n`` None or 1: ``k`` unchanged.
    Needs ``n <= size`` (checked by :func:`plan_pruning`)."""
    if not n or n == 1 or k >= size:
        return min(k, size)
    return max(n, min((size // n) * n, int(math.floor(k / n + 0.5)) * n))


def parse_sparsity(value: Any) -> str | float:
    """``"authors"`` or a float in (0, 1); anything else is a :class:`PruneError`."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "authors":
            return "authors"
        try:
            value = float(v)
        except ValueError:
            raise PruneError(f"--sparsity must be 'authors' or a number in (0, 1), got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < float(value) < 1.0) \
            or math.isnan(float(value)):
        raise PruneError(f"--sparsity must be 'authors' or a number in (0, 1), got {value!r}")
    return float(value)


@dataclass
class ChannelGroup:
    """Channels that must be kept or removed together."""

    name: str
    stage: str
    size: int
    producers: list[tuple[str, str]] = field(default_factory=list)  # (conv prefix, BN prefix) writing them
    consumers: list[str] = field(default_factory=list)  # conv prefixes (input dim) and "fc" reading them


@dataclass
class ConvEntry:
    prefix: str
    out_group: int
    in_group: int | None  # None: the image
    in_fixed: int
    kernel: int


def channel_groups(model: Backbone) -> tuple[list[ChannelGroup], list[ConvEntry]]:
    """The zoo's channel dependency graph: groups and every conv's (output group, input group)."""
    unsupported = [(n, b) for n, b in zip(model.block_names, model.blocks) if not getattr(b, "prunable", False)]
    if unsupported:  # the block type's capability (engine/blocks.py ``prunable``), not the arch's name
        n, b = unsupported[0]
        raise PruneError(f"pruning supports residual basic blocks only: {model.arch} block {n} is "
                         f"{getattr(b, 'block_type', '') or type(b).__name__!r}")
    groups: list[ChannelGroup] = []
    convs: list[ConvEntry] = []
    cur: int | None = None
    for i, (name, b) in enumerate(zip(model.block_names, model.blocks)):
        p, stage = f"blocks.{i}", name.split(".")[0]
        if isinstance(b, Stem):
            if cur is not None:
                raise PruneError(f"{model.arch}: a stem after the first block is not supported")
            groups.append(ChannelGroup(name, stage, b.cout, [(f"{p}.conv1", f"{p}.bn1")]))
            cur = len(groups) - 1
            convs.append(ConvEntry(f"{p}.conv1", cur, None, b.cin, 9))
        elif isinstance(b, BasicBlock):
            if cur is None:
                raise PruneError(f"{model.arch}: block {name} has no stem before it")
            groups[cur].consumers.append(f"{p}.conv1")
            groups.append(ChannelGroup(f"{name}.mid", stage, b.mid, [(f"{p}.conv1", f"{p}.bn1")], [f"{p}.conv2"]))
            mid = len(groups) - 1
            convs.append(ConvEntry(f"{p}.conv1", mid, cur, 0, 9))
            if b.shortcut_kind == "identity":
                groups[cur].producers.append((f"{p}.conv2", f"{p}.bn2"))
                groups[cur].name += f"+{name}"
                convs.append(ConvEntry(f"{p}.conv2", cur, mid, 0, 9))
            else:
                groups[cur].consumers.append(f"{p}.shortcut.0")
                groups.append(ChannelGroup(name, stage, b.cout,
                                           [(f"{p}.conv2", f"{p}.bn2"), (f"{p}.shortcut.0", f"{p}.shortcut.1")]))
                new = len(groups) - 1
                convs.append(ConvEntry(f"{p}.conv2", new, mid, 0, 9))
                convs.append(ConvEntry(f"{p}.shortcut.0", new, cur, 0, 1))
                cur = new
        else:
            raise PruneError(f"{model.arch}: cannot prune block {name} ({type(b).__name__})")
    if cur is None:
        raise PruneError(f"{model.arch}: no blocks to prune")
    groups[cur].consumers.append("fc")
    return groups, convs


def _weights_kept(keep: list[int], convs: list[ConvEntry], last: int, num_classes: int) -> int:
    n = sum(keep[c.out_group] * (keep[c.in_group] if c.in_group is not None else c.in_fixed) * c.kernel
            for c in convs)
    return n + keep[last] * num_classes


def _authors_keep(size: int, ratio: float) -> int:
    if ratio <= 0:
        return size
    return min(size, int(size * (1.0 - ratio) + 0.5) + 1)


def plan_pruning(model: Backbone, sparsity: str | float, round_channels: int | None = None) -> dict[str, Any]:
    """Which channels each group keeps (indices in ascending order) and why; touches nothing.
    ``round_channels``: each group's kept count rounded to a multiple of it (:func:`round_keep`)."""
    sparsity = parse_sparsity(sparsity)
    n_round = parse_round_channels(round_channels)
    groups, convs = channel_groups(model)
    if n_round is not None:
        small = min(groups, key=lambda g: g.size)
        if n_round > small.size:
            raise PruneError(f"--round-channels {n_round} is larger than the smallest channel group of {model.arch} "
                             f"width {model.width} ({small.name}: {small.size} channels); use at most {small.size}")
    sd = model.state_dict()
    last = next(i for i, g in enumerate(groups) if "fc" in g.consumers)
    dense = _weights_kept([g.size for g in groups], convs, last, model.num_classes)
    if sparsity == "authors":
        missing = sorted({g.stage for g in groups} - set(AUTHORS_RATIOS))
        if missing:
            raise PruneError(f"the authors' ratios name no stage {', '.join(missing)} of {model.arch}")
        unrounded = [_authors_keep(g.size, AUTHORS_RATIOS[g.stage]) for g in groups]
        keep = [round_keep(k, g.size, n_round) for k, g in zip(unrounded, groups)]
        scores = [torch.stack([sd[f"{c}.weight"].float().mean(dim=(1, 2, 3)) for c, _ in g.producers]).mean(0)
                  for g in groups]
        importance = "signed mean of each filter's weights (authors), averaged over a residual group's producers"
        ratio = None
    else:
        def keep_at(r: float, rounded: bool = True) -> list[int]:
            k = [max(1, int(round(g.size * (1.0 - r)))) for g in groups]
            return [round_keep(v, g.size, n_round) for v, g in zip(k, groups)] if rounded else k

        def sp(r: float) -> float:
            return 1.0 - _weights_kept(keep_at(r), convs, last, model.num_classes) / dense

        if sp(1.0) < sparsity:
            small = min(groups, key=lambda g: g.size)
            if n_round:
                raise PruneError(f"sparsity {sparsity:g} is out of reach with --round-channels {n_round}: keeping "
                                 f"{n_round} channels per group reaches only {sp(1.0):.4f}")
            raise PruneError(f"sparsity {sparsity:g} would remove every channel of a layer (e.g. {small.name}): "
                             f"keeping one channel per layer reaches only {sp(1.0):.4f}")
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if sp(mid) >= sparsity else (mid, hi)
        ratio = hi
        keep = keep_at(ratio)
        unrounded = keep_at(ratio, rounded=False)
        scores = [torch.stack([sd[f"{c}.weight"].float().abs().sum(dim=(1, 2, 3)) for c, _ in g.producers]).sum(0)
                  for g in groups]
        importance = "L1 norm of each filter (Li et al. 2017), summed over a residual group's producers"
    for g, k in zip(groups, keep):
        if k < 1:
            raise PruneError(f"pruning would remove every channel of {g.name}")
    kept_idx = [torch.sort(torch.topk(s, k).indices).values for s, k in zip(scores, keep)]
    kept = _weights_kept(keep, convs, last, model.num_classes)
    plan = {"mode": "authors" if sparsity == "authors" else "global-l1", "target": None if sparsity == "authors"
            else sparsity, "channel_ratio": ratio, "ratios": dict(AUTHORS_RATIOS) if sparsity == "authors" else None,
            "importance": importance, "groups": groups, "convs": convs, "keep_idx": kept_idx,
            "weights_dense": dense, "weights_kept": kept, "weight_sparsity": 1.0 - kept / dense,
            "round_channels": n_round}
    if sparsity != "authors":
        plan["target_met"] = bool(plan["weight_sparsity"] >= sparsity)
    if n_round is not None:
        plan["round_rule"] = (f"kept count rounded to the nearest multiple of {n_round} (halves up), at least "
                              f"{n_round}, at most the largest multiple that fits the group; same importance ranking"
                              + ("; the bisection on the channel fraction runs on the rounded counts"
                                 if sparsity != "authors" else ""))
        plan["weight_sparsity_unrounded"] = 1.0 - _weights_kept(unrounded, convs, last, model.num_classes) / dense
    return plan


@torch.no_grad()
def apply_pruning(model: Backbone, plan: dict[str, Any]) -> Backbone:
    """A new, smaller :class:`Backbone` holding the kept channels of ``model`` (which is untouched)."""
    groups: list[ChannelGroup] = plan["groups"]
    idx: list[torch.Tensor] = plan["keep_idx"]
    out_of: dict[str, torch.Tensor] = {}
    in_of: dict[str, torch.Tensor] = {}
    for g, ix in zip(groups, idx):
        if ix.numel() < 1:
            raise PruneError(f"pruning would remove every channel of {g.name}")
        for conv, bn in g.producers:
            out_of[conv] = out_of[bn] = ix
        for c in g.consumers:
            in_of[c] = ix
    sd = model.state_dict()
    new_sd: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        prefix, leaf = key.rsplit(".", 1)
        if leaf == "num_batches_tracked":
            new_sd[key] = t.clone()
            continue
        if prefix in out_of:
            t = t.index_select(0, out_of[prefix])
        if prefix in in_of and t.dim() >= 2:
            t = t.index_select(1, in_of[prefix])
        new_sd[key] = t.clone()
    named = []
    for i, (name, b) in enumerate(zip(model.block_names, model.blocks)):
        p = f"blocks.{i}"
        if isinstance(b, Stem):
            named.append((name, Stem(b.cin, int(out_of[f"{p}.conv1"].numel()))))
        else:
            named.append((name, BasicBlock(int(in_of[f"{p}.conv1"].numel()), int(out_of[f"{p}.conv2"].numel()),
                                           b.stride, mid=int(out_of[f"{p}.conv1"].numel()),
                                           shortcut=b.shortcut_kind)))
    new = Backbone(model.arch, named, feat_dim=int(in_of["fc"].numel()), num_classes=model.num_classes,
                   width=model.width, input_size=model.input_size)
    new.load_state_dict(new_sd, strict=True)
    new.train(model.training)
    return new


def prune_backbone(model: Backbone, sparsity: str | float, round_channels: int | None = None
                   ) -> tuple[Backbone, dict[str, Any]]:
    """Plan and apply; the report is JSON-clean (for meta.json)."""
    plan = plan_pruning(model, sparsity, round_channels=round_channels)
    pruned = apply_pruning(model, plan)
    params_dense = sum(p.numel() for p in model.parameters())
    params_kept = sum(p.numel() for p in pruned.parameters())
    rep = {k: plan[k] for k in ("mode", "target", "channel_ratio", "ratios", "importance", "weights_dense",
                                "weights_kept", "weight_sparsity", "round_channels")}
    rep.update({k: plan[k] for k in ("target_met", "round_rule", "weight_sparsity_unrounded") if k in plan})
    rep["channel_ratio"] = None if rep["channel_ratio"] is None else round(rep["channel_ratio"], 6)
    rep["groups"] = {g.name: [int(ix.numel()), g.size] for g, ix in zip(plan["groups"], plan["keep_idx"])}
    rep["blocks"] = [{"name": n, **b.spec()} for n, b in zip(pruned.block_names, pruned.blocks)]
    rep.update(params_dense=params_dense, params_kept=params_kept, params_kept_fraction=params_kept / params_dense,
               how="physical structured pruning, dependency graph of export/prune.py")
    return pruned, rep


def recover(model: Backbone, dataset: str, normalization: dict, epochs: int = DEFAULT_RECOVER_EPOCHS,
            lr: float = RECOVER_LR, batch_size: int = 64, seed: int = 0, data_path: str | None = None,
            subset: int | None = None, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Short fine-tune of the whole pruned backbone on its pretraining data (train split; SGD momentum
    0.9, ``lr`` cosine-annealed to 0 over the recovery's steps (``RECOVER_SCHEDULE``), the pretraining
    augmentation), BN statistics re-estimated along the way.

    Why the schedule: at a constant 0.05 the fine-tune ends at a high step size and can leave a lightly
    pruned model worse than it started (digits width 16, ``S = 1e-9``: 0.925 -> 0.858); annealed it ends
    at 0.955 (``S = 0.5``: 0.805 -> 0.953, ``authors``: 0.721 -> 0.825; docs/sparse.md).
    ``subset``: the pretraining's seeded class-balanced subset (the checkpoint records it), so recovery
    sees the images pretraining saw. Returns test accuracy before/after and the cost in seconds and steps."""
    import numpy as np
    import torch.nn.functional as F

    from lightcl.data.datasets import hflip_ok, load_dataset
    from lightcl.data.tasks import TensorData
    from lightcl.data.transforms import Preprocess

    from .pretrain import evaluate

    mean, std = list(normalization["mean"]), list(normalization["std"])
    train_ds = load_dataset(dataset, "train", data_path)
    if subset is not None and subset < len(train_ds):
        from lightcl.data.datasets import seeded_split as _seeded_split

        train_ds = train_ds.subset(_seeded_split(len(train_ds), train_ds.y, "test",
                                                 test_fraction=subset / len(train_ds), seed=seed))
    train = TensorData(train_ds)
    test = TensorData(load_dataset(dataset, "test", data_path))
    plain = Preprocess(mean, std)
    before = evaluate(model, test, plain)
    rep: dict[str, Any] = {"epochs": epochs, "lr": lr, "schedule": RECOVER_SCHEDULE, "batch_size": batch_size,
                           "dataset": dataset,
                           "train_images": len(train),
                           "test_accuracy_pruned": before}
    if epochs <= 0:
        rep.update(test_accuracy_recovered=before, seconds=0.0, steps=0)
        return rep
    aug = Preprocess(mean, std, size=model.input_size[-1], crop_padding=4, hflip=hflip_ok(dataset))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    per_epoch = -(-len(train) // batch_size)  # batches() keeps the last partial batch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * per_epoch))
    t0, steps = time.perf_counter(), 0
    for ep in range(epochs):
        model.train()
        for x, y in train.batches(np.arange(len(train)), batch_size, aug, train=True, shuffle=True, generator=gen):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
        if say:
            say(f"recovery fine-tune epoch {ep + 1}/{epochs}: last loss {loss.item():.3f}")
    model.eval()
    rep.update(test_accuracy_recovered=evaluate(model, test, plain), seconds=round(time.perf_counter() - t0, 3),
               steps=steps)
    return rep


def prune_for_export(model: Backbone, ck: dict, sparsity: str | float, recover_epochs: int = DEFAULT_RECOVER_EPOCHS,
                     data_path: str | None = None, say: Callable[[str], None] | None = None,
                     round_channels: int | None = None) -> tuple[Backbone, dict[str, Any]]:
    """Prune a loaded checkpoint for ``export_checkpoint``, then recover; ``(pruned model, report)``."""
    if recover_epochs < 0:
        raise PruneError(f"--recover-epochs must be >= 0, got {recover_epochs}")
    sparsity = parse_sparsity(sparsity)
    pruned, rep = prune_backbone(copy.deepcopy(model).eval(), sparsity, round_channels=round_channels)
    if say:
        say(f"pruned ({rep['mode']}{f', channels rounded to multiples of {round_channels}' if round_channels else ''})"
            f": weight sparsity {rep['weight_sparsity']:.4f}, "
            f"{rep['params_kept']:,} of {rep['params_dense']:,} parameters kept")
    rep["test_accuracy_dense"] = ck.get("test_accuracy")
    if ck.get("dataset") and ck.get("normalization"):
        rep["recovery"] = recover(pruned, ck["dataset"], ck["normalization"], epochs=recover_epochs,
                                  data_path=data_path, subset=ck.get("subset"), seed=int(ck.get("seed") or 0),
                                  say=say)
        if say:
            r = rep["recovery"]
            say(f"pretraining test accuracy: dense {rep['test_accuracy_dense']}, pruned {r['test_accuracy_pruned']:.4f}, "
                f"after {recover_epochs} recovery epoch(s) {r['test_accuracy_recovered']:.4f} ({r['seconds']:.1f} s)")
    pruned.eval()
    return pruned, rep


__all__ = ["AUTHORS_RATIOS", "DEFAULT_RECOVER_EPOCHS", "PruneError", "parse_sparsity", "parse_round_channels",
           "round_keep", "channel_groups",
           "plan_pruning", "apply_pruning", "prune_backbone", "recover", "prune_for_export"]
