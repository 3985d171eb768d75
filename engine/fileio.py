"""Atomic, checksummed files: state survives a SIGKILL at any point of a write.

A directory is written into a temporary sibling, every file fsync-ed, then swapped in with
``os.rename`` (atomic on POSIX). The previous version is kept until the new one is in place.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a file where a folder should be, no permission, disk full: one typed line
        raise StateError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise StateError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """Serialise tensors to safetensors bytes through numpy.

    Not ``safetensors.torch.save``: it views every tensor through ``np.ctypeslib.as_array``, which
    creates and caches (forever) a new ctypes type per distinct byte size. A classifier that grows
    with every task has a new size at every save: ~6 KiB leaked per save, without bound.
    """
    from safetensors.numpy import save as np_save

    arrays = {}
    for k, v in tensors.items():
        try:
            arrays[k] = v.detach().cpu().contiguous().numpy()
        except TypeError:  # a dtype numpy lacks (bfloat16): the torch path, leak and all
            from safetensors.torch import save as torch_save

            return torch_save({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, metadata=metadata)
    return np_save(arrays, metadata=metadata)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------- directory swaps
# Temporary (``.NAME.tmp-*``) and previous-version (``.NAME.old-*``) siblings carry the writer's pid and
# a token of its identity (boot id + process start time), so a *reader* running ``recover_directory``
# while another process is in the middle of a save leaves that save alone (it used to delete the
# writer's temporary directory, or put the old version back between the writer's two renames), and a
# pid recycled after a reboot is not mistaken for the writer that crashed.
_ACTIVE: set[str] = set()  # swap siblings this process is using right now
_ACTIVE_LOCK = threading.Lock()
_MARKER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-(?P<token>[0-9a-f]+|x))?(?:-.*)?$")
SWAP_WAIT_S = 5.0  # how long a reader waits for a live writer to finish its two renames


_BOOT_ID: bytes | None = None


def _boot_id() -> bytes:
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", "rb") as f:
                _BOOT_ID = f.read().strip()
        except OSError:
            _BOOT_ID = b""
    return _BOOT_ID


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, identity token = digest of boot id + start time) of ``pid``; None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        state, start = fields[0], fields[19]
    except (OSError, IndexError):
        return None
    return state.decode(errors="replace"), hashlib.sha256(_boot_id() + b":" + start).hexdigest()[:8]


_MY_TOKEN: tuple[int, str] | None = None


def _my_token() -> str:
    global _MY_TOKEN
    if _MY_TOKEN is None or _MY_TOKEN[0] != os.getpid():  # recomputed in a forked child
        _MY_TOKEN = (os.getpid(), (_proc_stat(os.getpid()) or ("", "x"))[1])
    return _MY_TOKEN[1]


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _owner_alive(path: Path) -> bool:
    """Is the process that made this swap sibling still using it?"""
    m = _MARKER.match(path.name)
    if not m:
        return False
    pid, token = int(m["pid"]), m["token"]
    if token is None:
        return False  # an old-style name (before owners were recorded): stale
    if pid == os.getpid() and token == _my_token():
        with _ACTIVE_LOCK:
            return str(path) in _ACTIVE
    if not _pid_exists(pid):
        return False
    st = _proc_stat(pid)
    if st is None:
        return True  # no /proc to tell a recycled pid: assume the writer lives (a leftover is harmless)
    state, have = st
    if state in ("Z", "X"):
        return False  # killed, not yet reaped
    return token == "x" or have == token


def _siblings(dest: Path, kind: str) -> list[Path]:
    out = []
    for p in dest.parent.glob(f".{glob.escape(dest.name)}.{kind}-*"):
        m = _MARKER.match(p.name)
        if m is None or (m["name"] == dest.name and m["kind"] == kind):  # unparsable: an old-style name
            out.append(p)
    return out


@contextlib.contextmanager
def _registered(*paths: Path) -> Iterator[None]:
    with _ACTIVE_LOCK:
        _ACTIVE.update(str(p) for p in paths)
    try:
        yield
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.difference_update(str(p) for p in paths)


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``dest`` atomically.

    ``dest`` always holds either the complete old version or the complete new one. The old one
    is moved to ``.dest.old-*`` for the instant between the two renames; ``recover_directory``
    puts it back if a crash lands exactly there.
    """
    dest = Path(dest).absolute()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        recover_directory(dest)
        tag = f"{os.getpid()}-{_my_token()}-"
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{tag}", dir=dest.parent))
    except OSError as e:
        raise StateError(f"cannot write {dest}: {e.strerror or e}") from e
    old = dest.parent / f".{dest.name}.old-{tag}{secrets.token_hex(4)}"
    with _registered(tmp, old):
        try:
            yield tmp
            fsync_tree(tmp)
            if dest.exists():
                os.rename(dest, old)
                os.rename(tmp, dest)
                _fsync_dir(dest.parent)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, dest)
                _fsync_dir(dest.parent)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if not dest.exists() and old.exists():  # failed between the two renames: put the old one back
                with contextlib.suppress(OSError):
                    os.rename(old, dest)
            if isinstance(e, OSError):  # disk full, permissions: the previous version is intact
                raise StateError(f"cannot write {dest}: {e.strerror or e} (the previous version is kept)") from e
            raise


def recover_directory(dest: str | os.PathLike, wait_s: float | None = None) -> None:
    """Finish or roll back an interrupted ``atomic_directory`` swap and drop stale temp dirs.

    Siblings of a writer that is still running (another process or thread in the middle of a save)
    are left alone; if ``dest`` is missing because such a writer is between its two renames, wait
    up to ``wait_s`` (default ``SWAP_WAIT_S``) for it, then roll back anyway.
    """
    dest = Path(dest).absolute()
    parent = dest.parent
    if not parent.is_dir():
        return

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:  # removed meanwhile by its writer
            return 0.0

    olds = sorted(_siblings(dest, "old"), key=mtime)
    if not dest.exists() and olds:
        deadline = time.monotonic() + (SWAP_WAIT_S if wait_s is None else wait_s)
        while not dest.exists() and any(_owner_alive(p) and p.exists() for p in olds) \
                and time.monotonic() < deadline:
            time.sleep(0.001)
        olds = [p for p in olds if p.exists()]
        if not dest.exists() and olds:
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rename(olds[-1], dest)
                _fsync_dir(parent)
            olds = [p for p in olds if p.exists()]
    for p in olds + _siblings(dest, "tmp"):
        if not _owner_alive(p):
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


def read_buffer(path: str | os.PathLike) -> bytearray:
    """A whole file in one writable buffer (``readinto``: no intermediate ``bytes`` copy)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            k = f.readinto(view[got:])
            if not k:
                break
            got += k
    if got != size:
        raise OSError(f"{path}: file changed size while being read")
    return buf
