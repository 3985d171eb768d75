"""Image files -> 8-bit arrays, the same way on the device (``lightcl predict --images``, the robot loop) and
on the host (``lightcl.data``'s image folders).

Why not ``Image.convert("RGB")``: Pillow clips 16-bit grey (``I;16``, ``I``, PGM with maxval > 255) to
white when it converts to 8 bit, so a 16-bit frame was labelled as an all-white one without a word.
Here 16-bit values are scaled by 255/65535 with rounding; palette, grey+alpha, CMYK, RGBA and the other
modes go through Pillow's own conversions (alpha dropped, as torchvision's folder loader does).
Pillow's decompression-bomb warning becomes a refusal of that image: an image is bounded in bytes and in
pixels before it is decoded. A file that cannot be read is one line (:class:`ImageError`); readers of many
files skip it, count it and report it (:func:`load_images`). Python 3.8 / torch 1.13 compatible.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError, LightCLError
from .fileio import open_regular
from .optional import require

if TYPE_CHECKING:  # torch is imported by load_images only: listing and decoding files stay light
    from torch import Tensor

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
MAX_IMAGE_BYTES = 256 << 20
# Pillow's own bound (Image.MAX_IMAGE_PIXELS, 89,478,485: a 1 GB RGBA image); above it Pillow only warns
# (and refuses at twice as many). lightcl refuses at the bound.
MAX_IMAGE_PIXELS = 89478485

_GREY = ("1", "L")
_SIXTEEN = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(InputError):
    """One image file that cannot be used (unreadable, corrupt, too large, an unsupported pixel format)."""


def printable(name: str) -> str:
    """A file name on one line: a newline (or any control character) in an image name split its output line."""
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def _pil():
    return require("PIL.Image", needed_for="reading image files", install="pip install pillow (or lightcl[device])")


def sixteen_to_eight(a: np.ndarray) -> np.ndarray:
    """16-bit values (0..65535) -> uint8 ``round(v * 255 / 65535)`` (exact: integer arithmetic). The 8-bit
    twin ``v8`` of an image stored as ``v8 * 257`` comes back as ``v8``."""
    v = a.astype(np.int64)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def to_uint8_array(im, name: str = "image") -> np.ndarray:
    """A Pillow image -> uint8 ``[H, W, 1]`` (grey modes) or ``[H, W, 3]`` (the rest)."""
    mode = im.mode
    if mode in _GREY:
        return np.asarray(im.convert("L"), dtype=np.uint8)[..., None]
    if mode in _SIXTEEN:
        a = np.asarray(im)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise ImageError(f"{name}: {mode} pixels span {int(a.min())}..{int(a.max())}, outside the 16-bit range "
                             f"0..65535; convert it to an 8- or 16-bit image")
        return sixteen_to_eight(a)[..., None]
    if mode == "F":
        raise ImageError(f"{name}: floating-point pixels (mode F) have no defined 8-bit scale; convert it to an "
                         f"8- or 16-bit image")
    if mode in ("LA", "La"):
        return np.asarray(im.convert("L"), dtype=np.uint8)[..., None]
    if mode in ("P", "PA"):  # a palette may hold colours: RGB (transparency is dropped)
        im = im.convert("RGBA") if mode == "PA" or "transparency" in im.info else im.convert("RGB")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_image(path, max_pixels: Optional[int] = None) -> np.ndarray:
    """One image file -> uint8 ``[H, W, 1|3]``; :class:`ImageError` (one line) when it cannot be used.

    The file must be a regular file of at most :data:`MAX_IMAGE_BYTES` (a FIFO named ``x.png`` blocked
    forever) with at most ``max_pixels`` pixels (default :data:`MAX_IMAGE_PIXELS`; checked from the header,
    before anything is decoded).
    """
    Image = _pil()
    name = printable(str(path))
    bound = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    try:
        fh = open_regular(path, "image", max_bytes=MAX_IMAGE_BYTES, error=ImageError)
    except ImageError as e:
        raise ImageError(printable(str(e))) from None
    with fh:
        try:
            with warnings.catch_warnings():
                # Pillow warns (stderr) above its bound and raises at twice it: both are one refusal here
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(fh)
            with im:
                w, h = im.size
                if w * h > bound:
                    raise ImageError(f"{name}: {w} x {h} = {w * h} pixels, more than the {bound} an image may have "
                                     f"(a decompression bomb?); refusing it")
                im.load()
                return np.array(to_uint8_array(im, name), dtype=np.uint8, order="C")  # a writable copy
        except ImageError:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise ImageError(f"{name}: {' '.join(str(e).split())[:200]}; refusing it") from None
        except Image.UnidentifiedImageError:
            raise ImageError(f"{name}: not an image (no format Pillow reads)") from None
        except Exception as e:  # PIL's own errors (truncated data, bad chunks, ...), MemoryError
            raise ImageError(f"{name}: not a readable image ({' '.join(str(e).split())[:200]})") from None


def image_files(path, exts: Sequence[str] = IMAGE_EXTS) -> List[Path]:
    """``path`` itself (a file), or the image files under it (a folder; symlinked folders followed once, in
    sorted order, hidden names skipped)."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    out, seen = [], set()
    for root, dirs, files in os.walk(p, followlinks=True):
        try:
            key = os.stat(root)
            ident = (key.st_dev, key.st_ino)
        except OSError:
            dirs[:] = []
            continue
        if ident in seen:  # a symlink loop, or the same folder linked twice
            dirs[:] = []
            continue
        seen.add(ident)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / f for f in sorted(files)
                   if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts)
    return out


def _pil_stretch(t: "Tensor", height: int, width: int) -> "Tensor":
    """uint8 ``[1, C, h, w]`` -> ``[1, C, H, W]`` with Pillow's ``resize(BILINEAR)`` (antialiased when
    shrinking; the numbers files got before lightcl had resize rules, kept so old exports predict alike)."""
    import torch

    if tuple(t.shape[-2:]) == (height, width):
        return t
    Image = _pil()
    a = t[0].permute(1, 2, 0).numpy()
    im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else np.ascontiguousarray(a))
    r = np.array(im.resize((width, height), Image.BILINEAR), dtype=np.uint8)  # writable
    r = r[..., None] if r.ndim == 2 else r
    return torch.from_numpy(r).permute(2, 0, 1).unsqueeze(0)


def load_images(files: Sequence, input_shape: Sequence[int], resize: Optional[dict] = None,
                on_skip: Optional[Callable[[str], None]] = None, max_pixels: Optional[int] = None,
                ) -> Tuple["Tensor", List[int], List[str]]:
    """Read ``files`` and bring each to ``input_shape`` (``[C, H, W]`` or ``[H, W]``) by the export's
    ``resize`` rule: ``(x uint8 [N, C, H, W], indices of the files kept, one line per file skipped)``.

    A file that cannot be used is skipped, never the batch: its line goes to ``on_skip`` as well.
    """
    import torch

    from .preprocess import match_channels, resize_rule, resize_to_input

    stretch = resize_rule(resize, input_shape)["rule"] == "stretch"
    want = int(input_shape[0]) if len(input_shape) == 3 else None
    xs, kept, skipped = [], [], []
    for i, f in enumerate(files):
        try:
            a = read_image(f, max_pixels)
            t = match_channels(torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0), want)
            if stretch:  # Pillow's bilinear, as every file reader of lightcl did before the resize rules
                t = _pil_stretch(t, int(input_shape[-2]), int(input_shape[-1]))
            xs.append(resize_to_input(t.contiguous(), input_shape, resize))
        except LightCLError as e:
            msg = " ".join(str(e).split())
            skipped.append(msg)
            if on_skip is not None:
                on_skip(msg)
            continue
        kept.append(i)
    if not xs:
        c = int(input_shape[0]) if len(input_shape) == 3 else 3
        return torch.zeros((0, c, int(input_shape[-2]), int(input_shape[-1])), dtype=torch.uint8), kept, skipped
    channels = max(x.shape[1] for x in xs)  # [H, W] shapes keep each file's channels: grey joins colour as RGB
    return torch.cat([x.expand(-1, channels, -1, -1) for x in xs]), kept, skipped
