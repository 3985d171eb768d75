"""``ewc``: online EWC (Schwarz et al. 2018, "Progress & Compress"), as Mammoth's ``ewc_on``.

loss = CE + e_lambda * sum(F * (theta - theta*)^2). At the end of each task the empirical Fisher
is computed example by example, Mammoth's way (exp(-nll) * grad^2 of the log-likelihood of the
true label, averaged over examples), and folded in online: F <- gamma * F + F_task; theta* <- theta.

Departure (cost, stated): Mammoth sums the Fisher over the task's whole training set; we use a
reservoir of ``fisher_samples`` samples of the task (default 256), one random crop each, and the
model in eval mode for that pass (train mode with batch 1 would also move BN statistics).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightcl.engine.reservoir import Reservoir

from .base import Batch, Step, WholeModelMethod, register_method
from .configs import EWCConfig


@register_method
class EWC(WholeModelMethod):
    name = "ewc"
    summary = "online EWC (Mammoth ewc_on)"
    config_class = EWCConfig
    cost = 1.1

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        self.e_lambda = self.config.e_lambda
        self.gamma = self.config.gamma
        self.fisher: list[Tensor] | None = None
        self.anchor: list[Tensor] | None = None
        self._samples: Reservoir | None = None

    def on_begin_task(self, task_id, classes, n_train) -> None:
        self._samples = Reservoir(self.config.fisher_samples, self.generator)

    def penalty(self) -> Tensor:
        if self.fisher is None:
            return torch.zeros((), device=self.device)
        return sum((f * (p - a).pow(2)).sum() for f, p, a in zip(self.fisher, self.net.parameters(), self.anchor))

    def train_step(self, batch: Batch) -> Step:
        x, yi = batch.x.to(self.device), batch.y
        self.drop_gradients()
        self.net.train()
        ce = self.ce(self.net(x), yi)
        pen = self.penalty()
        loss = ce + self.e_lambda * pen
        self.step(loss)
        self._samples.add(x=x, y=yi)
        return Step({"loss": float(loss.detach()), "ce": float(ce.detach()), "ewc": float(pen.detach())},
                    trained=len(x))

    def on_end_task(self, x) -> Step:
        n = 0
        data = self._samples.data if self._samples is not None else {}
        if data:
            params = list(self.net.parameters())
            fish = [torch.zeros_like(p) for p in params]
            was = self.net.training
            self.net.eval()
            n = len(data["x"])
            for ex, lab in zip(data["x"], data["y"]):
                self.net.zero_grad(set_to_none=True)
                out = self.net(ex.unsqueeze(0))
                loss = -F.nll_loss(F.log_softmax(out, dim=1), lab.unsqueeze(0), reduction="none")
                exp_cond_prob = torch.mean(torch.exp(loss.detach()))
                torch.mean(loss).backward()
                for f, p in zip(fish, params):
                    if p.grad is not None:
                        f += exp_cond_prob * p.grad.detach() ** 2
            self.net.zero_grad(set_to_none=True)
            self.net.train(was)
            fish = [f / n for f in fish]
            self.fisher = fish if self.fisher is None else [self.gamma * a + b for a, b in zip(self.fisher, fish)]
            self.anchor = [p.detach().clone() for p in params]
        self._samples = None
        return Step(trained=n)  # the Fisher pass: forward + backward per sample

    def extra_state(self) -> int:
        # Fisher + anchor weights: two copies of the parameters
        return 2 * sum(p.numel() for p in self.net.parameters())
