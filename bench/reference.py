"""The authors' LightCL procedure in plain PyTorch, for comparison with the engine.

Reproduces ``my_process``/``my_train``/``test`` of github INV-WZQ/LightCL (LightCL.py, commit 62fda8b):
the whole model in train mode while learning (frozen BN statistics drift); from task 1 the buffer is
the first N images of a batch of the task, its targets recorded by one forward of the whole model on
the buffer alone; each step pushes the buffer through the whole model *first*, then the batch;
loss = CE on the task's logit slice + beta x masked squared tap differences (logits unmasked); after
each task the vital channels come from a full batch of the task through the train-mode model,
OR-ed across tasks; prediction with ``model.eval()``. Taps as in their models.py: every block after
the split, after its first conv+BN+ReLU and at its output, plus the logits (the block types declare
their taps; :func:`lightcl.engine.blocks.forward_block_taps` names them exactly as the engine's Head).

Where it differs from their script: the buffer batch is the first batch the caller observes (theirs
is a separate ``next(iter(loader))``: the same kind of draw); ``end_task(x)`` takes the fresh batch
from the caller (without one: the last full-size observed batch, never a trailing remainder); the
classifier's xavier init draws from a seeded generator. The engine with ``frozen_bn="train"`` matches
this procedure to float precision (tests/test_faithful.py pins it against a separate re-statement).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lightcl.engine.blocks import forward_block_taps
from lightcl.engine.classifier import fresh_classifier
from lightcl.engine.losses import sliced_cross_entropy
from lightcl.engine.memory import FeaturePatternMemory


class ReferenceLightCL:
    def __init__(self, model: nn.Module, split_index: int, num_classes: int, lr: float = 0.01, beta: float = 2e-4,
                 buffer_size: int = 15, ratio: float = 0.15, seed: int = 0) -> None:
        self.model = model
        self.k = split_index  # blocks[0..k] frozen
        g = torch.Generator().manual_seed(seed)
        model.fc = fresh_classifier(model.fc.in_features, num_classes, g, like=model.fc)
        for i, b in enumerate(model.blocks):
            for p in b.parameters():
                p.requires_grad_(i > self.k)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.trainable, lr=lr)
        self.beta = beta
        self.memory = FeaturePatternMemory(buffer_size, ratio)
        self.tasks: list[list[int]] = []
        self._last_x: Tensor | None = None

    def forward_taps(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        taps = {}
        for i, (name, b) in enumerate(zip(self.model.block_names, self.model.blocks)):
            if i > self.k:
                x = forward_block_taps(name, b, x, taps)
            else:
                x = b(x)
        logits = self.model.fc(torch.flatten(self.model.pool(x), 1))
        taps["logits"] = logits
        return logits, taps

    def begin_task(self, classes: list[int], first_x: Tensor | None = None, first_y: Tensor | None = None) -> None:
        self.tasks.append(list(classes))
        self.model.train()
        if len(self.tasks) > 1 and first_x is not None and self.beta > 0:
            self.memory.set_buffer(first_x, first_y, len(self.tasks) - 1)
            with torch.no_grad():
                _, taps = self.forward_taps(self.memory.features)
            self.memory.record_targets(taps)

    def observe(self, x: Tensor, y: Tensor) -> dict:
        self.model.train()
        classes = self.tasks[-1]
        self.optimizer.zero_grad(set_to_none=True)
        fp = torch.zeros(())
        if self.memory.active():
            _, taps = self.forward_taps(self.memory.features)
            fp = self.memory.penalty(taps, self.beta)
        logits, _ = self.forward_taps(x)
        ce = sliced_cross_entropy(logits, torch.as_tensor(y, dtype=torch.long), classes)
        loss = ce + fp
        loss.backward()
        self.optimizer.step()
        if self._last_x is None or len(x) >= len(self._last_x):
            self._last_x = x  # a trailing remainder never replaces a full batch
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), "feature_pattern": float(fp.detach())}

    def end_task(self, x: Tensor | None = None) -> None:
        """Vital channels from ``x`` (a fresh full batch of the task, as the authors), else the last full batch."""
        self.model.train()
        with torch.no_grad():
            _, taps = self.forward_taps(x if x is not None else self._last_x)
        self.memory.update_masks(taps)
        self._last_x = None

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        self.model.eval()
        out = self.model(x)
        self.model.train()
        return out
