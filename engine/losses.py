"""Loss rules shared by the learner, the reference loop and every baseline."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def sliced_cross_entropy(logits: Tensor, target_index: Tensor, columns: Sequence[int] | Tensor) -> Tensor:
    """Cross-entropy over ``logits[:, columns]`` only (TIL-style slicing: a task's or the seen classes).

    ``target_index`` holds column indices into the full ``logits``; each must be one of ``columns``.
    This is the authors' ``F.cross_entropy(out[:, classes], y - offset)`` for any column set.
    """
    cols = torch.as_tensor(columns, dtype=torch.long, device=logits.device)
    pos = torch.full((logits.shape[1],), -1, dtype=torch.long, device=logits.device)
    pos[cols] = torch.arange(len(cols), device=logits.device)
    local = pos[target_index.to(logits.device)]
    if bool((local < 0).any()):
        raise ValueError("sliced_cross_entropy: a target is outside the kept columns")
    return F.cross_entropy(logits[:, cols], local)
