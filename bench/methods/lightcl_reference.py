"""``lightcl-reference``: the authors' LightCL procedure in plain PyTorch (bench/reference.py).

The whole model in train mode (frozen BN statistics drift, as ``model.train()`` in their code),
the buffer holds the first 15 *images* of the new task's first batch and is pushed through the whole
model at every step; trainable: the blocks after the split (layer4 of a ResNet-18) + a fresh xavier classifier;
the taps are the ones the block types declare (any backbone of the zoo).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Batch, Method, Step, n_params, register_method
from .configs import LightCLReferenceConfig


@register_method
class LightCLReference(Method):
    name = "lightcl-reference"
    summary = "the authors' LightCL procedure in plain torch"
    config_class = LightCLReferenceConfig
    trains = "blocks after the split + classifier (whole model in torch)"
    cost = 0.6
    wants_fresh_batch = True

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        from lightcl.bench.reference import ReferenceLightCL
        from lightcl.export.zoo import split_index

        from .base import pretrained_backbone

        model, _ = pretrained_backbone(ctx)  # the checkpoint, or composed from the export (bench update)
        model = model.to(self.device)
        self.k = split_index(model, ctx.scenario.split)
        c = self.config
        self.ref = ReferenceLightCL(model, self.k, ctx.num_classes, lr=float(c.lr), beta=float(c.beta),
                                    buffer_size=int(c.buffer_size), ratio=float(c.ratio), seed=int(ctx.seed))
        self.model = model
        self._begun = False
        f_model = self.declare_part("model", model)
        f_frozen = self.declare_part("frozen", nn.Sequential(*model.blocks[: self.k + 1]))
        self.declare_part("head", per_sample=f_model - f_frozen)
        self.model.train()

    def on_begin_task(self, task_id, classes, n_train) -> None:
        self._begun = False

    def train_step(self, batch: Batch) -> Step:
        x, yi = batch.x.to(self.device), batch.y
        targets = 0
        if not self._begun:  # the authors take the buffer from the new task's first batch
            self.ref.begin_task(self.task_indices(self.current_task), x, yi)
            self._begun = True
            if self.ref.memory.active():
                targets = len(self.ref.memory)  # the new buffer through the whole model for its targets
        out = self.ref.observe(x, yi)
        n = len(x) + (len(self.ref.memory) if self.ref.memory.active() else 0)
        return Step(out, trained={"head": n}, forwarded={"model": targets, "frozen": n})

    def on_end_task(self, x: Tensor | None) -> Step | None:
        """``x``: a fresh full batch of the task for the vital channels (the suite draws one, as for ``lightcl``)."""
        if not self._begun:
            return None
        self.ref.end_task(None if x is None else x.to(self.device))
        return Step(forwarded={"model": self.ctx.batch_size})

    def logits(self, x: Tensor) -> Tensor:
        return self.ref.logits(x.to(self.device))

    def accounting(self) -> dict:
        from lightcl.bench.accounting import count_activations

        buf = len(self.ref.memory) or int(self.config.buffer_size)
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
