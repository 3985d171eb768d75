"""``sgd``: plain fine-tuning of the whole pretrained model, task after task (the lower bound)."""
from __future__ import annotations

from .base import Batch, Step, WholeModelMethod, register_method
from .configs import SGDConfig


@register_method
class SGD(WholeModelMethod):
    name = "sgd"
    summary = "fine-tune the whole pretrained model (lower bound)"
    config_class = SGDConfig

    def train_step(self, batch: Batch) -> Step:
        x, yi = batch.x.to(self.device), batch.y
        self.net.train()
        self.drop_gradients()  # before the forward: the last step's gradients are not carried into the peak
        loss = self.ce(self.net(x), yi)
        self.step(loss)
        return Step({"loss": float(loss.detach())}, trained=len(x))
