"""``er``: Experience Replay with a reservoir buffer of images (Mammoth's ``er``).

Each step: the current batch + ``minibatch_size`` samples drawn from the buffer, one CE over all
outputs; then the batch is offered to the reservoir. Buffer size: ``--buffer`` (default: ``ERConfig``,
15, the paper's Table 1). Departure (stated): we store the batch as the suite gives it (after the random
crop); Mammoth stores the un-augmented image and augments it again when replaying.
"""
from __future__ import annotations

import torch

from lightcl.engine.reservoir import Reservoir

from .base import Batch, Step, WholeModelMethod, register_method
from .configs import ERConfig


@register_method
class ER(WholeModelMethod):
    name = "er"
    summary = "Experience Replay (reservoir, images)"
    config_class = ERConfig
    cost = 1.4

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        self.buffer = Reservoir(self.config.buffer_size, self.generator)
        self.minibatch = self.config.minibatch_size

    def train_step(self, batch: Batch) -> Step:
        x, yi = batch.x.to(self.device), batch.y
        self.drop_gradients()
        xb, yb = x, yi
        if len(self.buffer):
            b = self.buffer.sample(self.minibatch)
            xb, yb = torch.cat([x, b["x"]]), torch.cat([yi, b["y"]])
        self.net.train()
        loss = self.ce(self.net(xb), yb)
        self.step(loss)
        self.buffer.add(x=x, y=yi)
        return Step({"loss": float(loss.detach())}, trained=len(xb))

    def replayed_per_step(self) -> int:
        return min(self.minibatch, self.buffer.size)

    def buffer_numel(self) -> int:
        return self.buffer.numel()
