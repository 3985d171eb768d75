"""``latent-replay``: the natural edge competitor (Pellegrini et al., IROS 2020, "Latent Replay for
Real-Time Continual Learning"): the same frozen extractor as LightCL (the export, run by the engine's
backend), the same trainable head (deep layers + a fresh classifier), and ER in the latent space:
a reservoir buffer of *frozen features* (``--buffer``, default 15) replayed with every batch
(``minibatch_size`` samples), one CE over all outputs. Hyperparameters are ER's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightcl.engine.reservoir import Reservoir

from .base import Batch, Method, Step, n_params, register_method
from .configs import LatentReplayConfig
from .engine_common import extractor_and_head


@register_method
class LatentReplay(Method):
    name = "latent-replay"
    summary = "frozen extractor + replay of stored frozen features"
    config_class = LatentReplayConfig
    trains = "head (deep layers + classifier)"
    cost = 0.15
    needs_export = True
    main_part = "head"

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        self.extractor, self.head = extractor_and_head(self, ctx)
        self.head.train()
        c = self.config
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=c.lr, momentum=c.momentum,
                                         weight_decay=c.weight_decay)
        self.buffer = Reservoir(c.buffer_size, self.generator)
        self.minibatch = c.minibatch_size

    @torch.no_grad()
    def extract(self, x: Tensor) -> Tensor:
        return torch.as_tensor(self.extractor(x)).to(self.device, torch.float32)

    def train_step(self, batch: Batch) -> Step:
        yi = batch.y
        f = self.extract(batch.x)
        fb, yb = f, yi
        if len(self.buffer):
            b = self.buffer.sample(self.minibatch)
            fb, yb = torch.cat([f, b["f"]]), torch.cat([yi, b["y"]])
        self.head.train()
        loss = F.cross_entropy(self.head(fb), yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.buffer.add(f=f, y=yi)
        return Step({"loss": float(loss.detach())}, trained={"head": len(fb)}, forwarded={"frozen": len(f)})

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        f = self.extract(x)
        self.head.eval()
        try:
            return self.head(f)
        finally:
            self.head.train()

    def accounting(self) -> dict:
        from lightcl.bench.accounting import count_activations

        n = self.ctx.batch_size + min(self.minibatch, self.buffer.size)
        hp = n_params(self.head.parameters())
        return {"weights": self.frozen_params + hp, "trainable": hp,
                "optimizer_slots": 1 if self.config.momentum > 0 else 0, "extra_state": 0,
                "activations": count_activations(self.head, torch.zeros(n, *self.head.in_features)),
                "buffer": self.buffer.numel(), "samples_per_step": n}

    def describe(self) -> dict:
        return {**super().describe(), "extractor": self.extractor.info()}
