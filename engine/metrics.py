"""How TIL and CIL accuracy are counted: one rule for the learner's evaluate() and the benchmark."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def count_correct(logits: Tensor, target_index: Tensor, task_columns: Sequence[int] | Tensor,
                  seen_columns: Sequence[int] | Tensor) -> tuple[int, int]:
    """``(til, cil)`` correct counts for one batch.

    TIL: argmax inside the sample's task columns; CIL: argmax over every class seen so far (the
    authors take it over all outputs, which is the same once every class has been seen).
    """
    lg = logits.detach()
    tidx = torch.as_tensor(task_columns, dtype=torch.long, device=lg.device)
    sidx = torch.as_tensor(seen_columns, dtype=torch.long, device=lg.device)
    y = target_index.to(lg.device)
    til = int((tidx[lg[:, tidx].argmax(1)] == y).sum())
    cil = int((sidx[lg[:, sidx].argmax(1)] == y).sum())
    return til, cil
