"""``derpp``: DER++ (Buzzega et al., NeurIPS 2020), as Mammoth's ``derpp``.

loss = CE(batch) + alpha * MSE(net(buf_x1), buf_logits1) + beta * CE(net(buf_x2), buf_y2), with two
independent draws of ``minibatch_size`` from a reservoir buffer of (image, label, logits at
insertion). Buffer size: ``--buffer`` (default 15, the paper's Table 1). Same storage departure as
``er`` (the cropped batch is stored).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lightcl.engine.reservoir import Reservoir

from .base import Batch, Step, WholeModelMethod, register_method
from .configs import DERppConfig


@register_method
class DERpp(WholeModelMethod):
    name = "derpp"
    summary = "DER++ (reservoir, images + logits)"
    config_class = DERppConfig
    cost = 1.8

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        c = self.config
        self.buffer = Reservoir(c.buffer_size, self.generator)
        self.minibatch = c.minibatch_size
        self.alpha = c.alpha
        self.beta = c.beta

    def train_step(self, batch: Batch) -> Step:
        x, yi = batch.x.to(self.device), batch.y
        self.drop_gradients()
        self.net.train()
        out = self.net(x)
        ce = self.ce(out, yi)
        n = len(x)
        mse = torch.zeros((), device=self.device)
        ce2 = torch.zeros((), device=self.device)
        if len(self.buffer):
            b1 = self.buffer.sample(self.minibatch)
            mse = F.mse_loss(self.net(b1["x"]), b1["logits"])
            b2 = self.buffer.sample(self.minibatch)
            ce2 = self.ce(self.net(b2["x"]), b2["y"])
            n += len(b1["x"]) + len(b2["x"])
        loss = ce + self.alpha * mse + self.beta * ce2
        self.step(loss)
        self.buffer.add(x=x, y=yi, logits=out.detach())
        return Step({"loss": float(loss.detach()), "ce": float(ce.detach()), "mse": float(mse.detach()),
                     "ce_buffer": float(ce2.detach())}, trained=n)

    def replayed_per_step(self) -> int:
        return 2 * min(self.minibatch, self.buffer.size)

    def buffer_numel(self) -> int:
        return self.buffer.numel()
