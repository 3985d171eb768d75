"""``joint``: the upper bound. Every step trains on the current batch plus an equal share of every
earlier task's data, so each step sees all classes so far, class-balanced (cumulative joint training).

What is kept: every sample of every task, as first observed (the task's first epoch, one random
crop each: ``n_train`` from ``begin_task`` says when the first epoch ends). The current task keeps
its fresh augmented batches. Memory and compute are those of an upper bound, not an edge method.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Batch, Step, WholeModelMethod, register_method
from .configs import JointConfig


@register_method
class Joint(WholeModelMethod):
    name = "joint"
    summary = "cumulative joint training (upper bound)"
    config_class = JointConfig
    cost = 3.0

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        self.old_x: list[Tensor] = []  # one tensor per finished task
        self.old_y: list[Tensor] = []
        self._cur_x: list[Tensor] = []
        self._cur_y: list[Tensor] = []
        self._n_train: int | None = None
        self._stored = 0

    def on_begin_task(self, task_id, classes, n_train) -> None:
        self._n_train = n_train
        self._cur_x, self._cur_y, self._stored = [], [], 0

    def train_step(self, batch: Batch) -> Step:
        x, yi = batch.x.to(self.device), batch.y
        self.drop_gradients()
        if self._n_train is None or self._stored < self._n_train:
            k = len(x) if self._n_train is None else min(len(x), self._n_train - self._stored)
            self._cur_x.append(x[:k].detach().clone())
            self._cur_y.append(yi[:k].clone())
            self._stored += k
        xs, ys = [x], [yi]
        for ox, oy in zip(self.old_x, self.old_y):
            idx = torch.randint(0, len(ox), (len(x),), generator=self.generator)
            xs.append(ox[idx])
            ys.append(oy[idx])
        xb, yb = torch.cat(xs), torch.cat(ys)
        self.net.train()
        loss = self.ce(self.net(xb), yb)
        self.step(loss)
        return Step({"loss": float(loss.detach())}, trained=len(xb))

    def on_end_task(self, x) -> None:
        if self._cur_x:
            self.old_x.append(torch.cat(self._cur_x))
            self.old_y.append(torch.cat(self._cur_y))
        self._cur_x, self._cur_y = [], []

    def replayed_per_step(self) -> int:
        return self.ctx.batch_size * len(self.old_x)

    def buffer_numel(self) -> int:
        return int(sum(t.numel() for t in self.old_x) + sum(t.numel() for t in self.old_y))
