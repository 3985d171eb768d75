"""Input checks at the engine's public entry points: clear, typed errors before any state changes."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .errors import InputError, NonFiniteError, ShapeError, UnknownClassError


def check_images(x, expected_chw: Sequence[int] | None = None, what: str = "images") -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor [N, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ShapeError(f"{what} must have rank 4 [N, C, H, W], got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{what}: empty batch")
    if not x.is_floating_point():
        raise ShapeError(f"{what} must be floating point (normalised), got dtype {x.dtype}")
    if expected_chw is not None and tuple(x.shape[1:]) != tuple(expected_chw):
        raise ShapeError(f"{what} must be [N, {', '.join(map(str, expected_chw))}], got {list(x.shape)}")
    if x.dtype != torch.float32:
        x = x.float()  # checked after the cast: 1e300 in float64 is Inf in float32
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"{what} contain NaN or Inf values (as float32)")
    return x


def check_labels(y, n: int, allowed: Sequence[int] | None = None) -> Tensor:
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(y)
        except Exception:
            raise InputError(f"labels must be a 1-D integer tensor, got {type(y).__name__}") from None
    if y.dim() != 1 or y.shape[0] != n:
        raise ShapeError(f"labels must be a 1-D tensor of {n} values, got shape {list(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ShapeError(f"labels must be integers, got dtype {y.dtype}")
    y = y.long()
    if allowed is not None:
        bad = sorted(set(y.tolist()) - set(int(c) for c in allowed))
        if bad:
            raise UnknownClassError(f"labels {bad} are not among the current task's classes {sorted(allowed)}")
    return y
