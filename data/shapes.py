"""Image sizes the data layer is asked for: an int (square), ``[H, W]``, or an export's ``[C, H, W]``.

Kept free of torch so :mod:`lightcl.data.datasets` stays cheap to import.
"""
from __future__ import annotations

from typing import Sequence

# The built-in datasets and scenarios run at 32 x 32 (the paper's CIFAR-style models): the default shape.
DEFAULT_SIZE = 32


def image_shape(size: int | Sequence[int] = DEFAULT_SIZE) -> tuple[int | None, int, int]:
    """``(C, H, W)`` from an int (square, channels kept: ``C`` None), ``[H, W]`` or an export's ``[C, H, W]``."""
    if isinstance(size, bool):
        raise ValueError(f"an image size must be an int, [H, W] or [C, H, W], got {size!r}")
    if isinstance(size, int):
        return None, size, size
    dims = [int(v) for v in size]
    if len(dims) == 2:
        return None, dims[0], dims[1]
    if len(dims) == 3 and dims[0] in (1, 3):
        return dims[0], dims[1], dims[2]
    raise ValueError(f"an image size must be an int, [H, W] or [C, H, W] with C 1 or 3, got {list(size)}")
