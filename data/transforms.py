"""Tensor transforms without torchvision: resize, grey->RGB, normalise, crop-with-padding, flip.

Images are kept as uint8 ``[N, C, H, W]`` tensors once resized to the model's input (fashion-mnist at
32 x 32 stays ~72 MB), and turned into normalised float batches only when a batch is drawn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# the device side's preprocessing, shared (not copied): predict, the robot example and every benchmark
# normalise alike
from lightcl.engine.preprocess import (grey_to_rgb, normalize, resize_rule, resize_to_input, resize_uint8,
                                       to_tensor_uint8, to_unit_float)

from .shapes import DEFAULT_SIZE, image_shape

__all__ = ["to_tensor_uint8", "resize_uint8", "resize_to_input", "grey_to_rgb", "normalize", "random_crop",
           "random_hflip", "channel_stats", "Preprocess", "DEFAULT_SIZE", "image_shape"]

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
    """uint8 ``[N, C, h, w]`` -> normalised float ``[N, channels, H, W]``, optional augmentation.

    ``size``: an int (square) or ``(H, W)``; images of another size are brought to it by ``resize`` (an
    export's rule, :func:`lightcl.engine.preprocess.resize_to_input`; None = ``stretch``) before anything
    else. ``channels``: 3 (grey replicated, the zoo) or 1 (colour turned to ITU-R 601 grey).
    Normalisation statistics are in [0, 1] units, one value per output channel.
    """

    mean: list[float]
    std: list[float]
    size: int | tuple[int, int] = DEFAULT_SIZE
    crop_padding: int = 0
    hflip: bool = False
    channels: int = 3
    resize: dict | None = None

    def __post_init__(self) -> None:
        _, h, w = image_shape(self.size)
        self._hw = (h, w)
        self.resize = resize_rule(self.resize, self._hw)

    @classmethod
    def from_meta(cls, meta: dict, crop_padding: int = 0, hflip: bool = False) -> "Preprocess":
        """The export's preprocessing (``normalization``, ``input_shape``, ``resize``) plus augmentation."""
        c, h, w = (int(v) for v in meta["input_shape"])
        norm = meta["normalization"]
        return cls(list(norm["mean"]), list(norm["std"]), (h, w), crop_padding, hflip, c, meta.get("resize"))

    def __call__(self, x: Tensor, train: bool = False, generator: torch.Generator | None = None) -> Tensor:
        if x.dtype != torch.uint8:
            raise ValueError(f"Preprocess expects uint8 images, got {x.dtype}")
        if tuple(x.shape[-2:]) != self._hw:  # the size is applied, not only recorded
            x = resize_to_input(x, self._hw, self.resize)
        x = to_unit_float(x, self.channels)
        if train and self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if train and self.hflip:
            x = random_hflip(x, generator=generator)
        return normalize(x, self.mean, self.std)

    def to_dict(self) -> dict:
        out = {"mean": list(self.mean), "std": list(self.std), "size": self.size}
        if self.channels != 3 or self.resize != {"rule": "stretch"}:
            out.update(channels=self.channels, resize=dict(self.resize))
        return out
