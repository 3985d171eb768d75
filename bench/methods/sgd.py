"""``sgd``: plain fine-tuning of the whole pretrained model, task after task (the lower bound)."""
from __future__ import annotations

from torch import Tensor

from .base import WholeModelMethod


class SGD(WholeModelMethod):
    name = "sgd"

    def observe(self, x: Tensor, y: Tensor) -> dict:
        x, yi = x.to(self.device), self.to_index(y)
        self.net.train()
        self.drop_gradients()  # before the forward: the last step's gradients are not carried into the peak
        loss = self.ce(self.net(x), yi)
        self.step(loss)
        self.train_flops(len(x))
        return {"loss": float(loss.detach())}
