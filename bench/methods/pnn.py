"""``pnn``: Progressive Neural Networks (Rusu et al. 2016, arXiv 1606.04671), task-incremental only.

One *column* per task. A column is the pretrained ResNet-18 (every column starts from the same
pretrained weights, as every method of the paper's Table 1 does) with a fresh classifier. Column
``k > 0`` also receives *lateral connections* from every earlier column, shaped as Mammoth's
``backbone/ResNet18_PNN.py`` (aimagelab/mammoth @ e75a491c69fd729edeb01431afb753d9157d9a81):

* into stage ``i+1`` (``i`` = 1, 2, 3): ``adaptor_i = Alpha -> 1x1 conv -> ReLU -> a lateral stage``
  applied to the concatenation of the earlier columns' stage-``i`` outputs; its output is added
  to the column's own stage-``i+1`` output (then ReLU). ``Alpha`` is a learned elementwise scale
  initialised to ``U(0, 0.1)`` (Mammoth's ``AlphaModule``); the lateral stage has the shape of
  stage ``i+1`` and is freshly initialised (Kaiming), as in Mammoth;
* into the classifier: the earlier columns' pooled stage-4 features through ``Alpha -> 1x1 conv
  -> ReLU -> linear``, added to the column's logits.

The stages are the backbone's own (:func:`column_stages`, from its stage-level split points): ResNet-18's
four (``layer1``..``layer4``, as above), MobileNetV2's seven (``stage1``..``stage7``, stem and last conv
joined to the first and last); laterals feed every stage after the first and the classifier alike.

When task ``t`` ends its column is *frozen*: eval mode, ``requires_grad`` off, never touched again
(a test pins that it is bit-identical after later tasks). Training a new column runs the old
ones forward in eval mode without gradients; the optimiser (plain SGD, Mammoth ``models/pnn.py``:
a new optimiser per column) sees only the new column and its laterals. Loss: CE over all outputs,
as Mammoth's ``pnn.observe``.

Departures from Mammoth, stated:

* the lateral inputs are the earlier columns' *actual* activations (the PNN paper's
  ``h_{i-1}^{(j)}``, including their own laterals); Mammoth re-runs *copies* of the old columns'
  plain layers (no laterals) inside every new column, in train mode, and runs the old stems
  through the *new* column's ``bn1``. We hold each old column once and run it in eval mode.
* every column starts from the pretrained backbone (Mammoth's columns start from scratch), so PNN
  gets the same pretrained start as every other method in the table.

**Task-incremental only** (``til_only = True``): PNN needs the task id to pick a column. The
suite's ``evaluate`` does not pass one, so :meth:`logits` runs *all* columns in one pass (each
column's laterals need the earlier columns' activations anyway) and writes column ``t``'s outputs
into task ``t``'s output indices. TIL (argmax inside task ``t``'s indices) is therefore exactly
"column ``t`` on task ``t``"; an argmax across columns (CIL) has no meaning, and the suite reports
CIL as "n/a", never as a number.

Memory grows with the tasks: ``accounting()`` counts every column held (+ laterals) and is called
by the suite after the last task, so the theoretical figure is the end-of-run figure.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightcl.engine.classifier import fresh_classifier

from .base import Batch, Method, Step, n_params, register_method
from .configs import PNNConfig

STAGES = ("layer1", "layer2", "layer3", "layer4")
"""ResNet-18's stages (what :func:`column_stages` gives for it; kept for readers and tests)."""


def column_stages(backbone: nn.Module) -> list[tuple[str, int, int]]:
    """The backbone's stages as ``(name, first block index, last block index)``, from its stage-level split
    points (:func:`lightcl.export.zoo.split_points`): a stage is a split point that groups numbered blocks
    (``layer1`` = ``layer1.0``, ``layer1.1``; ``stage3`` = ``stage3.0`` ..). Lone blocks before the first
    stage (a stem) join the first stage, lone blocks after the last (MobileNetV2's ``last_conv``) join the
    last: ResNet-18 gives layer1 (stem + layer1.*) .. layer4, exactly the Mammoth columns."""
    from lightcl.export.zoo import split_points

    names = list(backbone.block_names)
    grouped = [p for p in split_points(backbone) if "." not in p and any(n.startswith(p + ".") for n in names)]
    if not grouped:
        raise ValueError(f"pnn: {getattr(backbone, 'arch', '?')} has no stage of numbered blocks "
                         f"(blocks: {', '.join(names)})")
    ends = [max(i for i, n in enumerate(names) if n.split(".")[0] == s) for s in grouped]
    out, start = [], 0
    for k, (s, end) in enumerate(zip(grouped, ends)):
        last = len(names) - 1 if k == len(grouped) - 1 else end
        out.append((s, start, last))
        start = last + 1
    return out


class Alpha(nn.Module):
    """A learned elementwise scale of the lateral input (Mammoth's ``AlphaModule``: U(0, 0.1) init)."""

    def __init__(self, shape: tuple[int, ...], generator: torch.Generator) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.rand((1, *shape), generator=generator) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.alpha


def _reinit(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Fresh Kaiming init (the backbone's own rule), seeded: lateral stages start untrained."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
    return module


class Column(nn.Module):
    """One PNN column: the backbone's blocks grouped in stages, a classifier, laterals from ``n_old`` columns."""

    def __init__(self, backbone: nn.Module, num_classes: int, n_old: int, stage_shapes: dict[str, tuple[int, int, int]],
                 generator: torch.Generator) -> None:
        super().__init__()
        import copy

        # block index ranges (column_stages): the stem belongs to the first stage
        self.stages = nn.ModuleDict()
        for s, first, last in column_stages(backbone):
            self.stages[s] = nn.Sequential(*backbone.blocks[first: last + 1])
        self.stage_names: list[str] = list(self.stages.keys())
        names = self.stage_names
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = fresh_classifier(backbone.feat_dim, num_classes, generator)
        self.n_old = int(n_old)
        self.laterals = nn.ModuleDict()
        if self.n_old:
            for prev, s in zip(names[:-1], names[1:]):
                c, h, w = stage_shapes[prev]
                stage_copy = _reinit(copy.deepcopy(self.stages[s]), generator)
                conv = _reinit(nn.Conv2d(c * self.n_old, c, 1), generator)
                self.laterals[s] = nn.Sequential(Alpha((c * self.n_old, h, w), generator), conv, nn.ReLU(), stage_copy)
            c4 = stage_shapes[names[-1]][0]
            self.laterals["fc"] = nn.Sequential(Alpha((c4 * self.n_old, 1, 1), generator),
                                                _reinit(nn.Conv2d(c4 * self.n_old, c4, 1), generator), nn.ReLU(),
                                                nn.Flatten(), fresh_classifier(c4, num_classes, generator))

    def forward(self, x: Tensor, old: list[dict[str, Tensor]] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and this column's stage outputs (what later columns take laterally)."""
        feats: dict[str, Tensor] = {}
        h = x
        names = self.stage_names
        for i, s in enumerate(names):
            h = self.stages[s](h)
            if i > 0 and self.n_old:
                lat = self.laterals[s](torch.cat([o[names[i - 1]] for o in old], 1))
                h = F.relu(h + lat)
            feats[s] = h
        out = self.fc(torch.flatten(self.pool(h), 1))
        if self.n_old:
            pooled = torch.cat([self.pool(o[names[-1]]) for o in old], 1)
            out = out + self.laterals["fc"](pooled)
        return out, feats


class _Step(nn.Module):
    """The current column as one module (old columns run inside, unregistered): for its forward cost and activations."""

    def __init__(self, column: Column, run_old) -> None:
        super().__init__()
        self.column = column
        self._run_old = run_old

    def forward(self, x: Tensor) -> Tensor:
        return self.column(x, self._run_old(x))[0]


@register_method
class PNN(Method):
    name = "pnn"
    summary = "Progressive Neural Networks (TIL only; a column per task)"
    config_class = PNNConfig
    trains = "one new column per task (+ laterals)"
    til_only = True
    cost = 2.0

    def __init__(self, ctx, **hp: Any) -> None:
        super().__init__(ctx, **hp)
        self.columns: list[Column] = []
        self.column_of: dict[int, int] = {}  # task id -> column index
        self.col_cost: list[float] = []  # forward cost per sample of each column (laterals included)
        self.optimizer: torch.optim.Optimizer | None = None
        self._stage_shapes: dict[str, tuple[int, int, int]] | None = None

    # --- columns
    def _backbone(self):
        from lightcl.export.checkpoint import load_checkpoint

        model, _ = load_checkpoint(self.ctx.ckpt)
        return model

    def _shapes(self, col: Column) -> dict[str, tuple[int, int, int]]:
        probe = torch.zeros(2, *self.ctx.input_shape, device=self.device)
        was = col.training
        col.eval()
        with torch.no_grad():
            _, feats = col(probe)
        col.train(was)
        return {s: tuple(int(v) for v in f.shape[1:]) for s, f in feats.items()}

    @torch.no_grad()
    def _run_old(self, x: Tensor, upto: int | None = None) -> list[dict[str, Tensor]]:
        """Stage outputs of the frozen columns ``0..upto-1`` (eval mode, no gradients)."""
        feats: list[dict[str, Tensor]] = []
        for col in self.columns[: len(self.columns) - 1 if upto is None else upto]:
            feats.append(col(x, feats if col.n_old else None)[1])
        return feats

    def on_begin_task(self, task_id, classes, n_train) -> None:
        if int(task_id) in self.column_of:
            raise ValueError(f"pnn: task {task_id} already has a column")
        n_old = len(self.columns)
        col = Column(self._backbone(), self.ctx.num_classes, n_old, self._stage_shapes or {}, self.generator)
        col = col.to(self.device).train()
        if self._stage_shapes is None:  # the first column has no laterals; the others need its stage shapes
            self._stage_shapes = self._shapes(col)
        self.columns.append(col)
        self.column_of[int(task_id)] = len(self.columns) - 1
        c = self.config
        self.optimizer = torch.optim.SGD(col.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        self.col_cost.append(self.declare_part("new column", col, forward=_Step(col, self._run_old)))
        self.declare_part("old columns", per_sample=sum(self.col_cost[:-1]))

    def on_end_task(self, x) -> None:
        col = self.columns[-1]
        col.eval()
        for p in col.parameters():
            p.requires_grad_(False)
        self.optimizer = None

    # --- the contract
    def train_step(self, batch: Batch) -> Step:
        if self.optimizer is None:
            raise ValueError("pnn: observe() outside a task")
        x, yi = batch.x.to(self.device), batch.y
        old = self._run_old(x)
        col = self.columns[-1]
        col.train()
        out, _ = col(x, old or None)
        loss = F.cross_entropy(out, yi)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # old columns only forward, the new column (+ laterals) trained
        return Step({"loss": float(loss.detach())}, trained={"new column": len(x)},
                    forwarded={"old columns": len(x)})

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """Column ``t``'s outputs at task ``t``'s indices, for every task seen (one pass over all columns)."""
        x = x.to(self.device)
        modes = [c.training for c in self.columns]
        for c in self.columns:
            c.eval()
        try:
            feats: list[dict[str, Tensor]] = []
            outs: list[Tensor] = []
            for col in self.columns:
                o, f = col(x, feats if col.n_old else None)
                outs.append(o)
                feats.append(f)
        finally:
            for c, m in zip(self.columns, modes):
                c.train(m)
        res = outs[-1].clone()  # finite everywhere; only each task's own indices carry meaning
        for t, k in self.column_of.items():
            idx = torch.tensor(self.task_indices(t), device=res.device)
            res[:, idx] = outs[k][:, idx]
        return res

    def column_state(self, k: int) -> dict[str, Tensor]:
        """A copy of column ``k``'s parameters and buffers (for tests: frozen columns never change)."""
        return {n: t.detach().clone() for n, t in self.columns[k].state_dict().items()}

    def accounting(self) -> dict:
        """After the last task: every column held (+ laterals), gradients of the newest column only."""
        from lightcl.bench.accounting import count_activations

        n = self.ctx.batch_size
        col = self.columns[-1]
        x = torch.zeros(n, *self.ctx.input_shape, device=self.device)
        step = _Step(col, self._run_old)
        step.train(col.training)  # count_activations restores this mode: a frozen column stays in eval
        acts = count_activations(step, x)
        # the earlier columns' outputs that feed the laterals are kept for the backward pass
        old = self._run_old(x)
        names = col.stage_names
        acts += sum(o[s].numel() for o in old for s in names[:-1])
        acts += sum(o[names[-1]].shape[0] * o[names[-1]].shape[1] for o in old)
        slots = 1 if self.config.momentum > 0 else 0
        return {"weights": sum(n_params(c.parameters()) for c in self.columns), "trainable": n_params(col.parameters()),
                "optimizer_slots": slots, "extra_state": 0, "activations": acts, "buffer": 0, "samples_per_step": n,
                "columns": len(self.columns)}

    def describe(self) -> dict:
        d = super().describe()
        d["columns"] = len(self.columns)
        d["cil"] = "not applicable (task-incremental only: the task id picks the column)"
        return d
