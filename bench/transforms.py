"""Tensor transforms without torchvision: resize, grey->RGB, normalise, crop-with-padding, flip.

Images are kept as uint8 ``[N, C, 32, 32]`` tensors once resized (fashion-mnist stays ~72 MB),
and turned into normalised float batches only when a batch is drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def normalize(x: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """``(x - mean) / std`` per channel of a float ``[N, C, H, W]`` tensor."""
    if not x.is_floating_point():
        raise ValueError(f"normalize needs a float tensor, got {x.dtype}")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def random_crop(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample random crop after zero padding (the CIFAR augmentation): each output image is the
    ``H x W`` window at a uniform offset in ``[0, 2 * padding]`` of its zero-padded image."""
    n, c, h, w = x.shape
    if padding <= 0 or n == 0:
        return x.clone()
    xp = F.pad(x, (padding,) * 4)
    dev = x.device
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    rows = (oy.view(n, 1) + torch.arange(h, device=dev).view(1, h))  # [n, h]
    cols = (ox.view(n, 1) + torch.arange(w, device=dev).view(1, w))  # [n, w]
    idx_n = torch.arange(n, device=dev).view(n, 1, 1)
    out = xp.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]  # [n, h, w, c]
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image left-right with probability ``p``."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    out = x.clone()
    out[flip] = out[flip].flip(-1)
    return out


def channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] units of a uint8 ``[N, C, H, W]`` tensor."""
    # Chunked float64 sums: no full float copy of the dataset (fashion-mnist would need 245 MB).
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for i in range(0, x.shape[0], 4096):
        xf = x[i: i + 4096].to(torch.float64).div_(255.0)
        s += xf.sum((0, 2, 3))
        s2 += xf.square().sum((0, 2, 3))
        n += xf.numel() // c
    if n == 0:
        raise ValueError("channel_stats of an empty tensor")
    mean = s / n
    var = (s2 - n * mean.square()).clamp_min(0) / max(1, n - 1)  # unbiased, like Tensor.std
    return mean.tolist(), var.sqrt().clamp_min(1e-3).tolist()


@dataclass
class Preprocess:
    """uint8 ``[N, C, S, S]`` -> normalised float ``[N, 3, S, S]``, optional augmentation.

    Normalisation statistics are in [0, 1] units, one value per output channel.
    """

    mean: list[float]
    std: list[float]
    size: int = 32
    crop_padding: int = 0
    hflip: bool = False

    def __call__(self, x: Tensor, train: bool = False, generator: torch.Generator | None = None) -> Tensor:
        if x.dtype != torch.uint8:
            raise ValueError(f"Preprocess expects uint8 images, got {x.dtype}")
        x = grey_to_rgb(x).to(torch.float32).div(255.0)
        if train and self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if train and self.hflip:
            x = random_hflip(x, generator=generator)
        return normalize(x, self.mean, self.std)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "size": self.size}
