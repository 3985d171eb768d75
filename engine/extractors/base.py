"""Shared plumbing of the extractor backends: input checks, identity, info."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError, NonFiniteError, ShapeError
from ..validate import check_tensor_kind


class BaseExtractor:
    """Common state: ``meta`` (export meta.json), ``frozen_id``, ``feature_shape``, ``device``."""

    backend = "base"
    OPTIONS: frozenset[str] = frozenset()

    def __init__(self, export_dir: str | Path, meta: dict[str, Any], device: torch.device) -> None:
        self.export_dir = Path(export_dir)
        self.meta = meta
        self.frozen_id: str = meta["frozen_id"]
        self.feature_shape: tuple[int, ...] = tuple(int(v) for v in meta["feature_shape"])
        self.input_shape: tuple[int, ...] = tuple(int(v) for v in meta["input_shape"])
        self.device = torch.device(device)
        self.session_create_ms: float | None = None

    def check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise InputError(f"extractor input must be a torch.Tensor [N, {', '.join(map(str, self.input_shape))}], "
                             f"got {type(x).__name__}")
        check_tensor_kind(x, "extractor input")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"extractor expects [N, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}")
        if x.shape[0] == 0:
            raise ShapeError("extractor got an empty batch")
        if x.dtype != torch.float32:
            raise ShapeError(f"extractor expects float32 input (normalised images), got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError("extractor input contains NaN or Inf values")

    def __call__(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": str(self.device), "frozen_id": self.frozen_id,
                "feature_shape": list(self.feature_shape), "session_create_ms": self.session_create_ms}

    def __repr__(self) -> str:
        i = self.info()
        return (f"<{type(self).__name__} backend={i.get('backend')} provider={i.get('provider')} "
                f"device={i.get('device')} frozen_id={self.frozen_id[:12]}>")
