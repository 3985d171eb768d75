"""The authors' LightCL procedure in plain PyTorch, for comparison with the engine.

Differences from the engine, on purpose (they are what the engine optimises away): the whole model
runs in PyTorch in train mode (frozen BN statistics drift), the buffer holds *images* and is pushed
through the whole model at every step, and nothing is exported.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightcl.engine.blocks import BasicBlock
from lightcl.engine.memory import FeaturePatternMemory


class ReferenceLightCL:
    def __init__(self, model: nn.Module, split_index: int, num_classes: int, lr: float = 0.01, beta: float = 2e-4,
                 buffer_size: int = 15, ratio: float = 0.15, seed: int = 0) -> None:
        self.model = model
        self.k = split_index  # blocks[0..k] frozen
        g = torch.Generator().manual_seed(seed)
        fc = nn.Linear(model.fc.in_features, num_classes)
        with torch.no_grad():
            bound = (6.0 / (fc.in_features + fc.out_features)) ** 0.5
            fc.weight.uniform_(-bound, bound, generator=g)
            fc.bias.zero_()
        model.fc = fc
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
            if i > self.k and isinstance(b, BasicBlock):
                h = b.first_conv(x)
                taps[f"{name}.conv1"] = h
                x = b.rest(x, h)
                taps[name] = x
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
        lut = {c: i for i, c in enumerate(classes)}
        ce = F.cross_entropy(logits[:, classes], torch.tensor([lut[int(v)] for v in y]))
        loss = ce + fp
        loss.backward()
        self.optimizer.step()
        self._last_x = x
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), "feature_pattern": float(fp.detach())}

    def end_task(self) -> None:
        self.model.train()
        with torch.no_grad():
            _, taps = self.forward_taps(self._last_x)
        self.memory.update_masks(taps)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        self.model.eval()
        out = self.model(x)
        self.model.train()
        return out
