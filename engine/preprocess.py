"""Image preprocessing on the device: uint8 images -> the normalised float batch the export expects.

The normalisation statistics live in the export's ``meta.json`` (``normalization``: mean, std in
[0, 1] units per channel); :class:`ImagePreprocess` applies them exactly as training did. The host
side (``lightcl.data.transforms``) builds its augmenting ``Preprocess`` on these same functions, so
the device and the benchmarks cannot drift apart. Python 3.8 / torch 1.13 compatible (see
docs/device-floor.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def to_tensor_uint8(x: np.ndarray) -> Tensor:
    """uint8 ``[N, H, W, C]`` numpy -> uint8 ``[N, C, H, W]`` tensor."""
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 [N,H,W,C], got {x.dtype} {x.shape}")
    a = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if not a.flags.writeable:  # torch.from_numpy warns on (and must not share) read-only memory
        a = a.copy()
    return torch.from_numpy(a)


def resize_uint8(x: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Bilinear (antialiased when shrinking) resize of a uint8 ``[N, C, H, W]`` tensor to ``size``."""
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 [N,C,H,W], got {x.dtype} {tuple(x.shape)}")
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    shrink = x.shape[-1] > size or x.shape[-2] > size
    for i in range(0, x.shape[0], chunk):
        xf = x[i: i + chunk].float()
        y = F.interpolate(xf, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        out[i: i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def grey_to_rgb(x: Tensor) -> Tensor:
    """``[N, 1, H, W]`` -> ``[N, 3, H, W]`` (a broadcast view: copy before writing into it)."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def to_unit_float(x: Tensor) -> Tensor:
    """uint8 ``[N, 1|3, H, W]`` -> float32 ``[N, 3, H, W]`` in [0, 1]."""
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    return grey_to_rgb(x).to(torch.float32).div(255.0)


def normalize(x: Tensor, mean: List[float], std: List[float]) -> Tensor:
    """``(x - mean) / std`` per channel of a float ``[N, C, H, W]`` tensor."""
    if not x.is_floating_point():
        raise ValueError(f"normalize needs a float tensor, got {x.dtype}")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


@dataclass
class ImagePreprocess:
    """uint8 ``[N, C, S, S]`` -> normalised float ``[N, 3, S, S]`` (no augmentation: inference, lessons)."""

    mean: List[float]
    std: List[float]
    size: int = 32

    @classmethod
    def from_meta(cls, meta: dict) -> "ImagePreprocess":
        """The preprocessing an export was made with (its ``meta.json``)."""
        norm = meta["normalization"]
        return cls(list(norm["mean"]), list(norm["std"]), int(meta["input_shape"][-1]))

    def __call__(self, x: Tensor, resize: Optional[bool] = None) -> Tensor:
        """``resize``: bring images to ``size`` first (default: when their size differs)."""
        if x.dtype != torch.uint8:
            raise ValueError(f"ImagePreprocess expects uint8 images, got {x.dtype}")
        if resize or (resize is None and tuple(x.shape[-2:]) != (self.size, self.size)):
            x = resize_uint8(x, self.size)
        return normalize(to_unit_float(x), self.mean, self.std)
