"""How TIL and CIL accuracy are counted (one rule for the learner's evaluate() and the benchmark), and the
continual-learning metrics of an accuracy matrix R[t][i] (accuracy on task i after task t), which
``lightcl learn`` and the benchmark both report."""
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


def final_average(R: Sequence[Sequence[float]]) -> float:
    return sum(R[-1]) / len(R[-1]) if R and R[-1] else 0.0


def forgetting(R: Sequence[Sequence[float]]) -> float:
    """Mean over tasks i < T-1 of (best accuracy on i before the end) - (final accuracy on i)."""
    if len(R) < 2:
        return 0.0
    T = len(R)
    vals = []
    for i in range(T - 1):
        best = max(R[t][i] for t in range(i, T - 1) if i < len(R[t]))
        vals.append(best - R[-1][i])
    return sum(vals) / len(vals)


def backward_transfer(R: Sequence[Sequence[float]]) -> float:
    """Mean over tasks i < T-1 of R[T-1][i] - R[i][i] (negative = forgetting)."""
    if len(R) < 2:
        return 0.0
    T = len(R)
    return sum(R[-1][i] - R[i][i] for i in range(T - 1)) / (T - 1)


def summarize(til: Sequence[Sequence[float]], cil: Sequence[Sequence[float]] | None) -> dict:
    """Final accuracy, forgetting and BWT for TIL and CIL. ``cil=None``: CIL is not applicable to the
    method (task-incremental only, e.g. PNN); its figures are ``None`` ("n/a"), never a number."""
    out = {"final_til": final_average(til), "forgetting_til": forgetting(til), "bwt_til": backward_transfer(til)}
    if cil is None:
        out.update(final_cil=None, forgetting_cil=None, bwt_cil=None)
    else:
        out.update(final_cil=final_average(cil), forgetting_cil=forgetting(cil), bwt_cil=backward_transfer(cil))
    return {k: out[k] for k in ("final_til", "final_cil", "forgetting_til", "forgetting_cil", "bwt_til", "bwt_cil")}
