"""``sgd``: plain fine-tuning of the whole pretrained model, task after task (the lower bound)."""
from __future__ import annotations

from torch import Tensor

from .base import WholeModelMethod


class SGD(WholeModelMethod):
    name = "sgd"

    def observe(self, x: Tensor, y: Tensor) -> dict:
        x, yi = x.to(self.device), self.to_index(y)
        self.net.train()
        # the canonical loop (zero_grad, forward, backward, step): the previous step's gradients are dropped
        # *before* the forward, not after it (``step`` zeroes again, a no-op then). Zeroing after the forward
        # kept one full set of gradients alive beside the forward's activations: +42.6 MiB of peak RSS at
        # width 64 (`lightcl bench update`'s finetune, docs/results/ledger.md pass 3). Same numbers either way.
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.ce(self.net(x), yi)
        self.step(loss)
        self.train_flops(len(x))
        return {"loss": float(loss.detach())}
