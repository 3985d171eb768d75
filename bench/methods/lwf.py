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

from .base import WholeModelMethod, frozen_copy


def _smooth(p: Tensor, temp: float) -> Tensor:
    q = p ** (1.0 / temp)
    return q / q.sum(1, keepdim=True)


def modified_kl_div(old: Tensor, new: Tensor) -> Tensor:
    return -torch.mean(torch.sum(old * torch.log(new), 1))


class LwF(WholeModelMethod):
    name = "lwf"
    cost = 1.4

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        self.alpha = self.config.alpha
        self.temp = self.config.softmax_temp
        self.teacher = None
        self.past: list[int] = []

    def begin_task(self, task_id, classes, n_train=None) -> None:
        self.past = self.seen_indices()
        super().begin_task(task_id, classes, n_train)

    def observe(self, x: Tensor, y: Tensor) -> dict:
        x, yi = x.to(self.device), self.to_index(y)
        self.drop_gradients()
        self.net.train()
        out = self.net(x)
        ce = self.ce(out, yi, self.seen_indices())  # over the classes seen so far
        kd = torch.zeros((), device=self.device)
        if self.teacher is not None and self.past:
            past = torch.tensor(self.past, device=self.device)
            with torch.no_grad():
                old = self.teacher(x)[:, past]
            self.forward_only_flops(len(x))
            kd = modified_kl_div(_smooth(F.softmax(old, 1), self.temp), _smooth(F.softmax(out[:, past], 1), self.temp))
        loss = ce + self.alpha * kd
        self.step(loss)
        self.train_flops(len(x))
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), "kd": float(kd.detach())}

    def end_task(self) -> None:
        self.teacher = frozen_copy(self.net)
        super().end_task()

    def extra_state(self) -> int:
        return sum(p.numel() for p in self.net.parameters())  # the teacher's weights
