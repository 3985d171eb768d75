"""Atomic, checksummed files: state survives a SIGKILL at any point of a write.

A directory is written into a temporary sibling, every file fsync-ed, then swapped in with
``os.rename`` (atomic on POSIX). The previous version is kept until the new one is in place.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import IntegrityError, StateError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a single file atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``dest`` atomically.

    ``dest`` always holds either the complete old version or the complete new one. The old one
    is moved to ``dest.old-*`` for the instant between the two renames; ``recover_directory``
    puts it back if a crash lands exactly there.
    """
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.rename(dest, old)
            os.rename(tmp, dest)
            _fsync_dir(dest.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
            _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_directory(dest: str | os.PathLike) -> None:
    """Finish or roll back an interrupted ``atomic_directory`` swap and drop stale temp dirs."""
    dest = Path(dest).absolute()
    parent = dest.parent
    if not parent.exists():
        return
    olds = sorted(parent.glob(f".{dest.name}.old-*"))
    if not dest.exists() and olds:
        os.rename(olds[-1], dest)
        olds = olds[:-1]
    for p in olds + list(parent.glob(f".{dest.name}.tmp-*")):
        shutil.rmtree(p, ignore_errors=True)


def safe_member(root: str | os.PathLike, name: str) -> Path:
    """Resolve ``name`` inside ``root``; refuse absolute paths and ``..`` escapes from metadata."""
    root = Path(root).resolve()
    if os.path.isabs(name) or not name:
        raise IntegrityError(f"refusing file name {name!r} from metadata: must be relative to {root}")
    p = (root / name).resolve()
    if p != root and root not in p.parents:
        raise IntegrityError(f"refusing file name {name!r} from metadata: it escapes {root}")
    return p


def verify_files(root: str | os.PathLike, checksums: dict[str, str], what: str = "directory") -> None:
    """Check each file against the sha256 recorded for it; the error names the file."""
    for name, expected in checksums.items():
        p = safe_member(root, name)
        if not p.is_file():
            raise StateError(f"{what} {root}: missing file {name}")
        got = sha256_file(p)
        if got != expected:
            raise IntegrityError(
                f"{what} {root}: {name} does not match its recorded sha256 "
                f"(expected {expected[:12]}..., got {got[:12]}...): the file is corrupt or was replaced"
            )


def read_json(path: str | os.PathLike, what: str = "file") -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise StateError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{what} {path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what} {path} must hold a JSON object")
    return obj
