"""The downloader against a real HTTP server on 127.0.0.1 serving Fashion-MNIST-format IDX files."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from lightcl.data import datasets as data
from lightcl.data.download import DownloadError, download, file_digest, parse_checksum
from lightcl.data.errors import DatasetNotFoundError
from lightcl.engine.errors import IntegrityError

N_TRAIN, N_TEST = 30, 10


def _idx_gz(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(base_url, spec, arrays, request log): the four Fashion-MNIST files, tiny, on a local server."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("LIGHTCL_DATA_MIRROR", raising=False)
    root = tmp_path / "www"
    root.mkdir()
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(N_TEST) % 10).astype(np.uint8),
    }
    files = {}
    for name, arr in arrays.items():
        blob = _idx_gz(arr)
        (root / name).write_bytes(blob)
        files[name] = "md5:" + hashlib.md5(blob).hexdigest()
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            log.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    spec = dict(data.FASHION_MNIST, base_url=base, files=files)
    try:
        yield base, spec, arrays, log
    finally:
        server.shutdown()
        server.server_close()


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_download_good_checksum_installs(served, tmp_path):
    base, spec, arrays, _ = served
    name = "t10k-labels-idx1-ubyte.gz"
    dest = tmp_path / "dl" / name
    sha = "sha256:" + hashlib.sha256((tmp_path / "www" / name).read_bytes()).hexdigest()
    assert download(base + name, dest, sha, progress=False) == dest
    assert file_digest(dest, "sha256") == sha.split(":")[1]
    assert _leftovers(dest.parent) == [name]
    assert np.array_equal(data.read_idx(dest), arrays[name])


def test_fetch_files_and_load(served):
    base, spec, arrays, log = served
    dest = data.cache_dir() / "fm"
    assert data.fetch_files(spec, dest) == dest
    assert _leftovers(dest) == sorted(spec["files"])
    n = len(log)
    data.fetch_files(spec, dest)  # already there: nothing fetched again
    assert len(log) == n


def test_load_fashion_mnist_downloads_into_cache(served, tmp_path, monkeypatch):
    base, spec, arrays, log = served
    empty = tmp_path / "nosys"
    empty.mkdir()
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", [empty])
    tr = data.load_fashion_mnist("train", download_ok=True, base_url=base, spec=spec)
    te = data.load_fashion_mnist("test", download_ok=False)  # now found in the cache
    cache = data.cache_dir() / "fashion-mnist"
    assert tr.source == te.source == str(cache)
    assert np.array_equal(tr.x[..., 0], arrays["train-images-idx3-ubyte.gz"])
    assert np.array_equal(te.y, arrays["t10k-labels-idx1-ubyte.gz"])
    assert _leftovers(cache) == sorted(spec["files"])
    assert sorted(p.lstrip("/") for p in log) == sorted(spec["files"])


def test_mirror_env_is_used(served, tmp_path, monkeypatch):
    base, spec, _, log = served
    monkeypatch.setenv("LIGHTCL_DATA_MIRROR", base.rstrip("/"))
    dest = tmp_path / "m"
    data.fetch_files(dict(spec, base_url="http://example.invalid/"), dest)
    assert _leftovers(dest) == sorted(spec["files"])


def test_bad_checksum_leaves_nothing(served, tmp_path):
    base, spec, _, _ = served
    name = "train-labels-idx1-ubyte.gz"
    dest = tmp_path / "dl"
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        download(base + name, dest / name, "md5:" + "0" * 32, progress=False)
    assert _leftovers(dest) == []
    # through the loader: the file with the wrong checksum is neither kept nor left half-written
    bad = dict(spec, files=dict(spec["files"], **{name: "sha256:" + "ab" * 32}))
    with pytest.raises(IntegrityError):
        data.fetch_files(bad, dest)
    left = _leftovers(dest)
    assert name not in left and not [f for f in left if f.endswith(".part")]
    assert set(left) <= set(spec["files"])  # only the verified ones that came before it


def test_bad_checksum_through_loader(served, tmp_path, monkeypatch):
    base, spec, _, _ = served
    empty = tmp_path / "nosys"
    empty.mkdir()
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", [empty])
    bad = dict(spec, files={k: "md5:" + "1" * 32 for k in spec["files"]})
    with pytest.raises(IntegrityError):
        data.load_fashion_mnist("train", base_url=base, spec=bad)
    assert _leftovers(data.cache_dir() / "fashion-mnist") == []


def test_missing_file_404(served, tmp_path):
    base, *_ = served
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(base + "nope.gz", tmp_path / "d" / "nope.gz", "md5:" + "0" * 32, progress=False)
    assert _leftovers(tmp_path / "d") == []


def test_unreachable_server(tmp_path, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    port = s.getsockname()[1]
    try:
        with pytest.raises(DownloadError, match="could not download"):
            download(f"http://127.0.0.1:{port}/x.gz", tmp_path / "d" / "x.gz", "md5:" + "0" * 32, progress=False)
        assert _leftovers(tmp_path / "d") == []
        empty = tmp_path / "nosys"
        empty.mkdir()
        monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", [empty])
        with pytest.raises(DatasetNotFoundError) as ei:
            data.load_fashion_mnist("test", base_url=f"http://127.0.0.1:{port}")
        msg = str(ei.value)
        assert "could not download" in msg and f"127.0.0.1:{port}" in msg
        assert "apt-get install dataset-fashion-mnist" in msg and str(empty) in msg
    finally:
        s.close()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.gz", "data:,hello", "/etc/passwd",
                                 "http:///nohost"])
def test_non_http_urls_refused(tmp_path, url):
    with pytest.raises(DownloadError, match="only http"):
        download(url, tmp_path / "d" / "x", "md5:" + "0" * 32, progress=False)
    assert not (tmp_path / "d").exists()


def test_parse_checksum():
    assert parse_checksum("md5:" + "AB" * 16) == ("md5", "ab" * 16)
    assert parse_checksum("sha256:" + "0" * 64)[0] == "sha256"
    for bad in ("abc", "sha1:" + "0" * 40, "md5:xyz", "sha256:" + "0" * 63, "md5:"):
        with pytest.raises(ValueError):
            parse_checksum(bad)


def test_default_spec_is_the_canonical_one():
    """The published Zalando checksums and URL are the defaults (never fetched in tests)."""
    spec = data.FASHION_MNIST
    assert spec["base_url"].startswith("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com")
    assert spec["files"]["train-images-idx3-ubyte.gz"] == "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    for c in spec["files"].values():
        parse_checksum(c)
    for c in data.CIFAR.values():
        parse_checksum(c["checksum"])
        assert c["url"].startswith("https://www.cs.toronto.edu/~kriz/")
