"""Image preprocessing on the device: uint8 images -> the normalised float batch the export expects.

The normalisation statistics live in the export's ``meta.json`` (``normalization``: mean, std in
[0, 1] units per channel); :class:`ImagePreprocess` applies them exactly as training did. The host
side (``lightcl.data.transforms``) builds its augmenting ``Preprocess`` on these same functions, so
the device and the benchmarks cannot drift apart. Python 3.8 / torch 1.13 compatible (see
docs/device-floor.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError, ShapeError


def to_tensor_uint8(x: np.ndarray) -> Tensor:
    """uint8 ``[N, H, W, C]`` numpy -> uint8 ``[N, C, H, W]`` tensor."""
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 [N,H,W,C], got {x.dtype} {x.shape}")
    a = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if not a.flags.writeable:  # torch.from_numpy warns on (and must not share) read-only memory
        a = a.copy()
    return torch.from_numpy(a)


# ---------------------------------------------------------------- the export's resize rules
RESIZE_RULES = ("shorter-side-center-crop", "stretch", "pad")
# torchvision's ImageNet eval transform: Resize(256) + CenterCrop(224), i.e. the crop is 0.875 of the resize
CROP_FRACTION = 0.875


def default_shorter_side(height: int, width: int) -> int:
    """``round(min(H, W) / 0.875)``: 256 for a 224 crop, 73 for 64, 55 for 48 (the contract's default S)."""
    return int(round(min(int(height), int(width)) / CROP_FRACTION))


def _hw(input_shape: Sequence[int]) -> Tuple[int, int]:
    if len(input_shape) not in (2, 3) or any(int(v) < 1 for v in input_shape):
        raise ShapeError(f"input_shape must be [C, H, W] or [H, W] of positive sizes, got {list(input_shape)}")
    return int(input_shape[-2]), int(input_shape[-1])


def resize_rule(resize: Optional[dict], input_shape: Sequence[int]) -> dict:
    """``meta["resize"]`` checked and completed: absent means ``stretch`` (exports made before the key);
    ``shorter-side-center-crop`` gets its default ``shorter_side``; ``pad`` its default ``fill`` 0."""
    h, w = _hw(input_shape)
    if resize is None:
        return {"rule": "stretch"}
    if not isinstance(resize, dict) or resize.get("rule") not in RESIZE_RULES:
        raise InputError(f"resize must be {{'rule': one of {', '.join(RESIZE_RULES)}}}, got {repr(resize)[:200]}")
    rule = resize["rule"]
    if rule == "shorter-side-center-crop":
        s = resize.get("shorter_side")
        s = default_shorter_side(h, w) if s is None else s
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 1 << 16:
            raise InputError(f"resize shorter_side must be an integer in 1..65536, got {s!r}")
        return {"rule": rule, "shorter_side": s}
    if rule == "pad":
        fill = resize.get("fill", 0)
        if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 255:
            raise InputError(f"resize fill must be an integer in 0..255, got {fill!r}")
        return {"rule": rule, "fill": fill}
    return {"rule": rule}


def _interpolate_uint8(x: Tensor, size: Tuple[int, int], antialias: bool, chunk: int = 4096) -> Tensor:
    """Bilinear resize of a uint8 ``[N, C, H, W]`` tensor, rounded back to uint8 (torchvision's tensor path:
    float interpolate, round, cast)."""
    out = torch.empty((x.shape[0], x.shape[1], size[0], size[1]), dtype=torch.uint8)
    for i in range(0, x.shape[0], chunk):
        y = F.interpolate(x[i: i + chunk].float(), size=size, mode="bilinear", align_corners=False,
                          antialias=antialias)
        out[i: i + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _check_uint8(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ShapeError(f"expected uint8 [N,C,H,W] images, got {got}")


def resize_uint8(x: Tensor, size: Union[int, Sequence[int]], chunk: int = 4096) -> Tensor:
    """Stretch a uint8 ``[N, C, H, W]`` tensor to ``size`` (an int: square; or ``(H, W)``): bilinear,
    antialiased when either side shrinks. The zoo's rule (``stretch``) since the first export."""
    _check_uint8(x)
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if x.shape[-2] == h and x.shape[-1] == w:
        return x
    return _interpolate_uint8(x, (h, w), antialias=x.shape[-2] > h or x.shape[-1] > w, chunk=chunk)


def shorter_side_size(height: int, width: int, shorter_side: int) -> Tuple[int, int]:
    """torchvision ``Resize(S)``'s output size: the shorter side becomes ``S``, the longer
    ``int(S * long / short)`` (truncated, as torchvision's ``_compute_resized_output_size``)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shorter_side, int(shorter_side * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    """torchvision ``CenterCrop([H, W])`` of ``[N, C, h, w]``: zero-pad first where the image is smaller
    (left/top get the floor half), then cut at ``round((h - H) / 2)``, ``round((w - W) / 2)``."""
    h, w = x.shape[-2], x.shape[-1]
    if height > h or width > w:
        pw, ph = max(width - w, 0), max(height - h, 0)
        x = F.pad(x, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2), value=0)
        h, w = x.shape[-2], x.shape[-1]
        if (h, w) == (height, width):
            return x
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return x[..., top: top + height, left: left + width]


def letterbox(x: Tensor, height: int, width: int, fill: int = 0) -> Tensor:
    """Keep the aspect ratio: scale so the whole image fits ``[H, W]``, centre it, fill the rest."""
    h, w = x.shape[-2], x.shape[-1]
    scale = min(height / h, width / w)
    nh, nw = max(1, min(height, int(round(h * scale)))), max(1, min(width, int(round(w * scale))))
    y = resize_uint8(x, (nh, nw))
    out = torch.full((x.shape[0], x.shape[1], height, width), int(fill), dtype=torch.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[..., top: top + nh, left: left + nw] = y
    return out


def rgb_to_grey(x: Tensor) -> Tensor:
    """``[N, 3, H, W]`` uint8 -> ``[N, 1, H, W]`` with ITU-R 601-2 luma, in Pillow's integer arithmetic
    (``convert("L")``: ``(19595 R + 38470 G + 7471 B + 2**15) >> 16``)."""
    xi = x.to(torch.int32)
    y = (xi[:, 0:1] * 19595 + xi[:, 1:2] * 38470 + xi[:, 2:3] * 7471 + 0x8000) >> 16
    return y.to(torch.uint8)


def match_channels(x: Tensor, channels: Optional[int]) -> Tensor:
    """Bring uint8 ``[N, 1|3|4, H, W]`` to ``channels``: grey is replicated only when 3 are wanted, colour is
    turned to grey (ITU-R 601) only when 1 is wanted; a 4th (alpha) channel is dropped. ``None`` keeps them."""
    if x.shape[1] == 4:
        x = x[:, :3]
    if channels is None or x.shape[1] == channels:
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and x.shape[1] == 3:
        return rgb_to_grey(x)
    raise ShapeError(f"cannot turn {x.shape[1]}-channel images into {channels}-channel ones")


def resize_to_input(x: Tensor, input_shape: Sequence[int], resize: Optional[dict] = None) -> Tensor:
    """uint8 ``[N, C, h, w]`` images of any size -> uint8 ``[N, C', H, W]`` by the export's rule.

    ``input_shape``: ``[C, H, W]`` (channels matched, :func:`match_channels`) or ``[H, W]`` (channels kept).
    ``resize``: ``meta["resize"]`` (:func:`resize_rule`; ``None`` = ``stretch``). ``shorter-side-center-crop``
    is torchvision's eval transform ``Resize(S, antialias=True)`` + ``CenterCrop([H, W])`` on uint8 tensors.
    """
    _check_uint8(x)
    h, w = _hw(input_shape)
    rule = resize_rule(resize, input_shape)
    if len(input_shape) == 3:
        x = match_channels(x, int(input_shape[0]))
    if rule["rule"] == "stretch":
        return resize_uint8(x, (h, w))
    if rule["rule"] == "pad":
        if (x.shape[-2], x.shape[-1]) == (h, w):
            return x
        return letterbox(x, h, w, rule["fill"])
    size = shorter_side_size(x.shape[-2], x.shape[-1], rule["shorter_side"])
    if (x.shape[-2], x.shape[-1]) != size:
        x = _interpolate_uint8(x, size, antialias=True)
    return center_crop(x, h, w).contiguous()


def grey_to_rgb(x: Tensor) -> Tensor:
    """``[N, 1, H, W]`` -> ``[N, 3, H, W]`` (a broadcast view: copy before writing into it)."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def to_unit_float(x: Tensor, channels: Optional[int] = 3) -> Tensor:
    """uint8 ``[N, 1|3, H, W]`` -> float32 ``[N, channels, H, W]`` in [0, 1] (grey replicated for 3)."""
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    if channels == 3:
        x = grey_to_rgb(x)
    elif channels is not None:
        x = match_channels(x, channels)
    return x.to(torch.float32).div(255.0)


def normalize(x: Tensor, mean: List[float], std: List[float]) -> Tensor:
    """``(x - mean) / std`` per channel of a float ``[N, C, H, W]`` tensor."""
    if not x.is_floating_point():
        raise ValueError(f"normalize needs a float tensor, got {x.dtype}")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


@dataclass
class ImagePreprocess:
    """uint8 ``[N, C, h, w]`` of any size -> normalised float ``[N, C, H, W]`` as the export expects
    (no augmentation: inference, lessons). ``input_shape`` ``[C, H, W]`` and ``resize`` come from the
    export's ``meta.json``; the default is the zoo's 3 x 32 x 32 with ``stretch``."""

    mean: List[float]
    std: List[float]
    input_shape: Tuple[int, int, int] = (3, 32, 32)
    resize: Optional[dict] = None

    def __post_init__(self) -> None:
        if isinstance(self.input_shape, int):  # the old third field, ``size``: a square RGB input
            self.input_shape = (3, self.input_shape, self.input_shape)
        self.input_shape = tuple(int(v) for v in self.input_shape)  # type: ignore[assignment]
        _hw(self.input_shape)
        if len(self.input_shape) != 3 or self.input_shape[0] not in (1, 3):
            raise ShapeError(f"input_shape must be [C, H, W] with C 1 or 3, got {list(self.input_shape)}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ShapeError(f"normalization needs {self.channels} mean/std values (input_shape "
                             f"{list(self.input_shape)}), got {len(self.mean)}/{len(self.std)}")
        self.resize = resize_rule(self.resize, self.input_shape)

    @property
    def channels(self) -> int:
        return self.input_shape[0]

    @property
    def size(self) -> Tuple[int, int]:
        """``(H, W)`` the export takes."""
        return self.input_shape[1], self.input_shape[2]

    @classmethod
    def from_meta(cls, meta: dict) -> "ImagePreprocess":
        """The preprocessing an export was made with: its ``meta.json``'s ``normalization``, ``input_shape``
        and ``resize`` (absent: ``stretch``)."""
        norm = meta["normalization"]
        return cls(list(norm["mean"]), list(norm["std"]), tuple(meta["input_shape"]), meta.get("resize"))

    def resize_images(self, x: Tensor) -> Tensor:
        """uint8 images of any size -> uint8 ``[N, C, H, W]`` (the export's rule; unchanged at the size)."""
        return resize_to_input(x, self.input_shape, self.resize)

    def __call__(self, x: Tensor, resize: Optional[bool] = None) -> Tensor:
        """``resize``: apply the resize rule first (default: when the images are not ``[H, W]`` already)."""
        if x.dtype != torch.uint8:
            raise ValueError(f"ImagePreprocess expects uint8 images, got {x.dtype}")
        if resize or (resize is None and tuple(x.shape[-2:]) != self.size):
            x = self.resize_images(x)
        return normalize(to_unit_float(x, self.channels), self.mean, self.std)
