"""``lightcl``: the engine itself: ``load_extractor`` (onnxruntime by default) + ``LightCL``.

Hyperparameters are the learner's options, typed by the engine's own ``LightCLConfig`` (defaults =
the authors' code: SGD lr 0.01, beta 2e-4, buffer 15 first samples of the new task's first batch,
ratio 0.15, TIL-sliced CE). Classes map to outputs through the learner's own map (``task_indices``,
``seen_indices``, ``label_index``): the method keeps no second copy. ``end_task(x)`` takes the
fresh full batch the suite draws, as ``lightcl learn`` does.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Method, forward_flops, n_params
from .engine_common import frozen_figures, open_extractor


class LightCLMethod(Method):
    name = "lightcl"
    trains = "head (deep layers + classifier)"
    cost = 0.2

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        from lightcl.engine.export_dir import load_head
        from lightcl.engine.learner import LightCL

        self.extractor = ctx.extractor if ctx.extractor is not None else open_extractor(ctx)
        opts = {"num_classes": ctx.num_classes, "seed": int(ctx.seed), "device": ctx.device, **self.hp}
        self.learner = LightCL(self.extractor, load_head(ctx.export_dir), **opts)
        self.frozen_params, self.f_frozen = frozen_figures(ctx)
        head = self.learner.head
        self.f_head = forward_flops(head, torch.zeros(2, *head.in_features))

    def begin_task(self, task_id, classes, n_train=None) -> None:
        # the learner checks the task and keeps the class -> output map; the Method base keeps none here
        self.learner.begin_task(int(task_id), [int(c) for c in classes])
        self.current_task = int(task_id)

    def observe(self, x: Tensor, y: Tensor) -> dict:
        capture = self.learner._pending_capture
        out = self.learner.observe(x, y)
        self.steps += 1
        mem = self.learner.memory
        n = len(x)
        self.flops += self.f_frozen * n + 3.0 * self.f_head * n
        refrozen = self.learner.frozen_bn == "train"  # the buffer images go through the frozen part again
        if capture:
            self.flops += (self.f_head + (self.f_frozen if refrozen else 0.0)) * len(mem)  # targets on the new buffer
        if mem.active():
            self.flops += (3.0 * self.f_head + (self.f_frozen if refrozen else 0.0)) * len(mem)
        return out

    def end_task(self, x: Tensor | None = None) -> None:
        """``x``: a fresh full batch of the task for the vital channels (the suite draws one, as ``lightcl learn``;
        without it the learner uses the task's last full-size batch)."""
        self.learner.end_task(x)
        self.flops += self.f_head * (self.ctx.batch_size if x is None else len(x))  # taps -> vital channels
        if x is not None:
            self.flops += self.f_frozen * len(x)
        super().end_task()

    def logits(self, x: Tensor) -> Tensor:
        return self.learner.logits(x)

    def task_indices(self, task_id: int) -> list[int]:
        return self.learner.task_indices(task_id)

    def seen_indices(self) -> list[int]:
        return self.learner.seen_indices()

    def to_index(self, y: Tensor) -> Tensor:
        return self.learner.label_index(y.long().cpu()).to(self.device)

    def accounting(self) -> dict:
        from lightcl.bench.accounting import count_activations

        head = self.learner.head
        n = self.ctx.batch_size + len(self.learner.memory)
        hp = n_params(head.parameters())
        return {"weights": self.frozen_params + hp, "trainable": hp,
                "optimizer_slots": 1 if self.learner.config.momentum > 0 else 0, "extra_state": 0,
                "activations": count_activations(head, torch.zeros(n, *head.in_features)),
                "buffer": self.learner.memory.nbytes() // 4, "samples_per_step": n}

    def describe(self) -> dict:
        return {**super().describe(), "options": dict(vars(self.learner.config)), "extractor": self.extractor.info()}
