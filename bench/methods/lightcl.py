"""``lightcl``: the engine itself: ``load_extractor`` (onnxruntime by default) + ``LightCL``.

Hyperparameters are the learner's options, typed by the engine's own ``LightCLConfig`` (defaults =
the authors' code: SGD lr 0.01, beta 2e-4, buffer 15 first samples of the new task's first batch,
ratio 0.15, TIL-sliced CE). Classes map to outputs through the learner's own map (``self.classes`` is a
view of it): the method keeps no second copy. ``end_task(x)`` takes the fresh full batch the suite draws,
as ``lightcl learn`` does (``wants_fresh_batch``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from lightcl.engine.learner import LightCLConfig

from .base import Batch, Method, Step, n_params, register_method
from .classes import LearnerClasses
from .engine_common import frozen_figures, open_extractor


@register_method
class LightCLMethod(Method):
    name = "lightcl"
    summary = "the engine (onnxruntime extractor + LightCL)"
    config_class = LightCLConfig
    trains = "head (deep layers + classifier)"
    cost = 0.2
    wants_fresh_batch = True
    needs_export = True
    main_part = "head"

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        from lightcl.engine.export_dir import load_head
        from lightcl.engine.learner import LightCL

        self.extractor = ctx.extractor if ctx.extractor is not None else open_extractor(ctx)
        opts = {"num_classes": ctx.num_classes, "seed": int(ctx.seed), "device": ctx.device, **self.hp}
        self.learner = LightCL(self.extractor, load_head(ctx.export_dir), **opts)
        self.classes = LearnerClasses(self.learner)
        self.frozen_params, f_frozen = frozen_figures(ctx)
        self.declare_part("frozen", per_sample=f_frozen)
        head = self.learner.head
        self.declare_part("head", head, head.in_features)

    def on_begin_task(self, task_id, classes, n_train) -> None:
        self.learner.begin_task(task_id, classes)  # the learner checks the task and registers its classes

    def train_step(self, batch: Batch) -> Step:
        capture = self.learner.pending_capture
        out = self.learner.observe(batch.x, batch.labels)
        mem = self.learner.memory
        n, m = len(batch.x), len(mem)
        head, frozen = {"head": n}, {"frozen": n}
        refrozen = self.learner.frozen_bn == "train"  # the buffer images go through the frozen part again
        if capture:  # the buffer's targets: its taps on the new buffer
            frozen["frozen"] += m if refrozen else 0
        if mem.active():  # the buffer trains with the batch
            head["head"] += m
            frozen["frozen"] += m if refrozen else 0
        return Step(out, trained=head, forwarded={**frozen, "head": m if capture else 0})

    def on_end_task(self, x: Tensor | None) -> Step:
        """``x``: a fresh full batch of the task for the vital channels (the suite draws one, as ``lightcl learn``;
        without it the learner uses the task's last full-size batch)."""
        self.learner.end_task(x)
        # the taps -> vital channels pass through the head (and the frozen part for a fresh batch)
        return Step(forwarded={"head": self.ctx.batch_size if x is None else len(x), "frozen": 0 if x is None else len(x)})

    def logits(self, x: Tensor) -> Tensor:
        return self.learner.logits(x)

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
