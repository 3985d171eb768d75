"""Reservoir sampling (Vitter's algorithm R): one rule for the engine's buffer and the baselines'."""
from __future__ import annotations

import torch
from torch import Tensor


def reservoir_slot(seen: int, capacity: int, generator: torch.Generator | None) -> int | None:
    """Where the ``seen``-th sample (1-based, already counted) goes: a slot, or None to drop it.

    While the buffer has room the sample is appended (slot ``seen - 1``); afterwards it replaces slot
    ``j ~ U[0, seen)`` when ``j < capacity``. The single ``torch.randint`` draw keeps RNG streams
    identical to the earlier copies of this rule.
    """
    if seen <= capacity:
        return seen - 1
    j = int(torch.randint(0, seen, (1,), generator=generator))
    return j if j < capacity else None


class Reservoir:
    """A reservoir over every sample offered, one tensor per named field (x, y, logits, ...)."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = int(size)
        self.generator = generator
        self.seen = 0
        self.data: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return 0 if not self.data else int(next(iter(self.data.values())).shape[0])

    def add(self, **fields: Tensor) -> None:
        n = next(iter(fields.values())).shape[0]
        for i in range(n):
            self.seen += 1
            slot = reservoir_slot(self.seen, self.size, self.generator)
            if slot is None:
                continue
            if slot >= len(self):
                for k, v in fields.items():
                    row = v[i: i + 1].detach().clone()
                    self.data[k] = row if k not in self.data else torch.cat([self.data[k], row])
            else:
                for k, v in fields.items():
                    self.data[k][slot] = v[i].detach()

    def sample(self, n: int) -> dict[str, Tensor]:
        m = len(self)
        idx = torch.randperm(m, generator=self.generator)[: min(n, m)]
        return {k: v[idx] for k, v in self.data.items()}

    def numel(self) -> int:
        return int(sum(v.numel() for v in self.data.values()))
