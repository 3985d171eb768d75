"""``lightcl-reference``: the authors' LightCL procedure in plain PyTorch (bench/reference.py).

The whole model in train mode (frozen BN statistics drift, as ``model.train()`` in their code),
the buffer holds the first 15 *images* of the new task's first batch and is pushed through the whole
model at every step; trainable: the blocks after the split (layer4 of a ResNet-18) + a fresh xavier classifier;
the taps are the ones the block types declare (any backbone of the zoo).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Method, forward_flops, n_params


class LightCLReference(Method):
    name = "lightcl-reference"
    trains = "blocks after the split + classifier (whole model in torch)"
    HP = ("lr", "beta", "buffer_size", "ratio")
    cost = 0.6

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        self.check_hp(self.HP)
        from lightcl.bench.reference import ReferenceLightCL
        from lightcl.export.zoo import _split_index

        from .base import pretrained_backbone

        model, _ = pretrained_backbone(ctx)  # the checkpoint, or composed from the export (bench update)
        model = model.to(self.device)
        self.k = _split_index(model, ctx.scenario.split)
        self.ref = ReferenceLightCL(model, self.k, ctx.num_classes, lr=float(self.opt("lr", 0.01)),
                                    beta=float(self.opt("beta", 2e-4)), buffer_size=int(self.opt("buffer_size", 15)),
                                    ratio=float(self.opt("ratio", 0.15)), seed=int(ctx.seed))
        self.model = model
        self._begun = False
        probe = torch.zeros(2, *ctx.input_shape, device=self.device)
        self.f_model = forward_flops(model, probe)
        frozen = nn.Sequential(*model.blocks[: self.k + 1])
        self.f_frozen = forward_flops(frozen, probe)
        self.f_head = self.f_model - self.f_frozen
        self.model.train()

    def begin_task(self, task_id, classes, n_train=None) -> None:
        super().begin_task(task_id, classes, n_train)
        self._begun = False

    def observe(self, x: Tensor, y: Tensor) -> dict:
        x, yi = x.to(self.device), self.to_index(y)
        if not self._begun:  # the authors take the buffer from the new task's first batch
            self.ref.begin_task(self.task_indices(self.current_task), x, yi)
            self._begun = True
            if self.ref.memory.active():
                self.flops += self.f_model * len(self.ref.memory)
        out = self.ref.observe(x, yi)
        self.steps += 1
        n = len(x) + (len(self.ref.memory) if self.ref.memory.active() else 0)
        self.flops += self.f_frozen * n + 3.0 * self.f_head * n
        return out

    def end_task(self, x: Tensor | None = None) -> None:
        """``x``: a fresh full batch of the task for the vital channels (the suite passes none: the last full batch)."""
        if self._begun:
            self.ref.end_task(None if x is None else x.to(self.device))
            self.flops += self.f_model * self.ctx.batch_size
        super().end_task()

    def logits(self, x: Tensor) -> Tensor:
        return self.ref.logits(x.to(self.device))

    def accounting(self) -> dict:
        from lightcl.bench.accounting import count_activations

        buf = len(self.ref.memory) or int(self.opt("buffer_size", 15))
        n = self.ctx.batch_size + buf
        with torch.no_grad():
            f = torch.zeros(n, *self.ctx.input_shape, device=self.device)
            self.model.eval()
            for b in self.model.blocks[: self.k + 1]:
                f = b(f)
            self.model.train()
        deep = nn.Sequential(*self.model.blocks[self.k + 1:])
        # the deep blocks' leaf outputs + pooled features + logits (what Head's leaves count)
        acts = count_activations(deep, f) + n * self.model.fc.in_features + n * self.ctx.num_classes
        return {"weights": n_params(self.model.parameters()), "trainable": n_params(self.ref.trainable),
                "optimizer_slots": 0, "extra_state": 0, "activations": acts,
                "buffer": self.ref.memory.nbytes() // 4, "samples_per_step": n}
