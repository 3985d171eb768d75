"""Tensor transforms without torchvision: resize, grey->RGB, normalise, crop-with-padding, flip.

Images are kept as uint8 ``[N, C, 32, 32]`` tensors once resized (fashion-mnist stays ~72 MB),
and turned into normalised float batches only when a batch is drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# the device side's preprocessing, shared (not copied): predict, the robot example and every benchmark
# normalise alike
from lightcl.engine.preprocess import grey_to_rgb, normalize, resize_uint8, to_tensor_uint8, to_unit_float

__all__ = ["to_tensor_uint8", "resize_uint8", "grey_to_rgb", "normalize", "random_crop", "random_hflip",
           "channel_stats", "Preprocess"]


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
        x = to_unit_float(x)
        if train and self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if train and self.hflip:
            x = random_hflip(x, generator=generator)
        return normalize(x, self.mean, self.std)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "size": self.size}
