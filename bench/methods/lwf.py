"""``lwf``: Learning without Forgetting (Li & Hoiem 2016), with Mammoth's loss.

loss = CE over seen classes + alpha * modified_kl(smooth(softmax(old[:, past]), T), smooth(softmax(new[:, past]), T)),
``smooth(p, T) = p^(1/T) / sum p^(1/T)`` and ``modified_kl(a, b) = -mean(sum(a * log b))`` (Mammoth's
``models/lwf.py``). Departures (stated): the old model's logits come from a frozen copy of the model
at the end of the previous task, on the same augmented batch (Mammoth precomputes them once on the
un-augmented data); Mammoth's classifier warm-up at the start of each task is left out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch, Step, WholeModelMethod, frozen_copy, register_method
from .configs import LwFConfig


def _smooth(p: Tensor, temp: float) -> Tensor:
    q = p ** (1.0 / temp)
    return q / q.sum(1, keepdim=True)


def modified_kl_div(old: Tensor, new: Tensor) -> Tensor:
    return -torch.mean(torch.sum(old * torch.log(new), 1))


@register_method
class LwF(WholeModelMethod):
    name = "lwf"
    summary = "Learning without Forgetting"
    config_class = LwFConfig
    cost = 1.4

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        self.alpha = self.config.alpha
        self.temp = self.config.softmax_temp
        self.teacher = None
        self.past: list[int] = []

    def train_step(self, batch: Batch) -> Step:
        x, yi = batch.x.to(self.device), batch.y
        self.drop_gradients()
        self.net.train()
        out = self.net(x)
        ce = self.ce(out, yi, self.seen_indices())  # over the classes seen so far
        kd = torch.zeros((), device=self.device)
        taught = 0
        if self.teacher is not None and self.past:
            past = torch.tensor(self.past, device=self.device)
            with torch.no_grad():
                old = self.teacher(x)[:, past]
            taught = len(x)  # the teacher's forward
            kd = modified_kl_div(_smooth(F.softmax(old, 1), self.temp), _smooth(F.softmax(out[:, past], 1), self.temp))
        loss = ce + self.alpha * kd
        self.step(loss)
        return Step({"loss": float(loss.detach()), "ce": float(ce.detach()), "kd": float(kd.detach())},
                    trained=len(x), forwarded=taught)

    def on_end_task(self, x) -> None:
        self.teacher = frozen_copy(self.net)
        self.past = self.seen_indices()  # the classes the teacher knows (no class is added before the next task)

    def extra_state(self) -> int:
        return sum(p.numel() for p in self.net.parameters())  # the teacher's weights
