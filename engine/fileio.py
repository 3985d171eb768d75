"""Atomic, checksummed files: state survives a SIGKILL at any point of a write.

A directory is written into a temporary sibling, every file fsync-ed, then swapped in with
``os.rename`` (atomic on POSIX). The previous version is kept until the new one is in place.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import InputError, IntegrityError, LightCLError, StateError

MAX_JSON_BYTES = 64 << 20  # no lightcl JSON comes near this; a bigger "meta.json" is not ours
MAX_JSON_DEPTH = 64  # what save accepts, load must read: nesting is bounded on both sides


# ---------------------------------------------------------------- one safe way to open a file for reading
def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None,
                 error: type[LightCLError] = StateError) -> IO[bytes]:
    """Open ``path`` for binary reading, refusing anything that is not a regular file.

    Every reader of lightcl goes through here: a FIFO in place of ``meta.json`` used to block forever (the
    open is non-blocking, then ``fstat`` decides), a directory or device gave a traceback, a symlink loop
    too. ``max_bytes`` bounds the size before anything is read. Raises ``error`` (one line).
    """
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} not found: {p}") from None
    except OSError as e:  # ELOOP (symlink loop), EACCES, ENOTDIR, ...
        raise error(f"{what} {p} cannot be opened ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {p} is {_kind(st.st_mode)}, not a regular file; refusing to read it")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{what} {p} is {st.st_size} bytes, more than the {max_bytes} a {what} can be")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def json_depth(obj: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a JSON value, iteratively (no recursion), stopping once past ``limit``."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list, tuple)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def loads_json(data: bytes | str, where: str, error: type[LightCLError] = IntegrityError) -> Any:
    """``json.loads`` whose every failure is one typed line: bad syntax, bad UTF-8, integers longer than
    Python converts (``ValueError``), nesting deeper than the parser recurses, or than ``MAX_JSON_DEPTH``."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise error(f"{where} is nested too deeply to read (at most {MAX_JSON_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError; so is a 10,000-digit int
        raise error(f"{where} is not valid JSON ({str(e).splitlines()[0][:200]})") from None
    if json_depth(obj) > MAX_JSON_DEPTH:
        raise error(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20, what: str = "file") -> str:
    h = hashlib.sha256()
    with open_regular(path, what) as f:
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
    """fsync every regular file and directory under ``path`` (symlinks and special files kept from a
    user's directory are not opened: a FIFO would block)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not stat.S_ISREG(os.lstat(full).st_mode):
                continue
            fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def write_bytes_atomic(path: str | os.PathLike, data: bytes, root: str | os.PathLike | None = None) -> None:
    """Write a single file atomically (temp file in the same folder, fsync, rename), under the one output
    rule (``engine.outpath``): an existing target must be a regular file (a link, FIFO, device or directory
    is refused, never replaced or followed); ``root``: the directory written into, never left through a link."""
    from .outpath import check_output_file, ensure_dir

    path = check_output_file(path, "output file", root=root)
    ensure_dir(path.parent, "folder of output file", root=root, error=StateError)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a file where a folder should be, no permission, disk full: one typed line
        raise StateError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        check_output_file(path, "output file", root=root)  # again: nothing swapped in since the first look
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


def write_json_atomic(path: str | os.PathLike, obj: Any, root: str | os.PathLike | None = None) -> None:
    check_json_depth(obj, f"the JSON for {path}")
    try:
        text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError, RecursionError) as e:
        raise InputError(f"cannot write {path}: not JSON-serialisable ({e})") from None
    write_bytes_atomic(path, text.encode(), root=root)


# ---------------------------------------------------------------- directory swaps
# Temporary (``.NAME.tmp-*``) and previous-version (``.NAME.old-*``) siblings carry the writer's pid and
# a token of its identity (boot id + process start time), so a *reader* running ``recover_directory``
# while another process is in the middle of a save leaves that save alone (it used to delete the
# writer's temporary directory, or put the old version back between the writer's two renames), and a
# pid recycled after a reboot is not mistaken for the writer that crashed.
_ACTIVE: set[str] = set()  # swap siblings this process is using right now
_ACTIVE_LOCK = threading.Lock()
_MARKER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-(?P<token>[0-9a-f]+|x))?"
                     r"(?:-(?P<nonce>[0-9a-f]{16})(?:-[0-9a-f]+)?|-.*)?$")
# Proof of authorship: every directory lightcl swaps holds SWAP_MARKER, whose content is a random nonce
# that the swap sibling's name repeats (``.NAME.tmp-PID-TOKEN-NONCE``, ``.NAME.old-PID-TOKEN-NONCE-R``).
# Recovery deletes or restores only siblings that carry it: a user's directory that merely looks like a
# leftover is never touched. (A writer killed while creating its temporary directory leaves it empty, or
# holding a partial marker: such a directory holds no data and is removed too.) The marker is removed from
# the new version once it is in place, and written into the current version just before it is renamed aside.
SWAP_MARKER = ".lightcl-swap"
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
        if m is not None and m["name"] == dest.name and m["kind"] == kind:
            out.append(p)
    return out


def _read_marker(d: Path) -> str | None:
    try:
        with open_regular(d / SWAP_MARKER, "swap marker", max_bytes=64) as f:
            return f.read().decode("ascii", "replace").strip()
    except (LightCLError, OSError):
        return None


def _write_marker(d: Path, nonce: str) -> None:
    with open(d / SWAP_MARKER, "wb") as f:
        f.write(nonce.encode())
        f.flush()
        os.fsync(f.fileno())


def _provably_ours(p: Path) -> bool:
    """Did lightcl make this swap sibling? Its marker must hold the nonce its name carries; an empty
    directory, or one holding nothing but a partial marker, is a writer killed while creating it."""
    m = _MARKER.match(p.name)
    if m is None or not m["nonce"] or p.is_symlink() or not p.is_dir():
        return False
    got = _read_marker(p)
    if got == m["nonce"]:
        return True
    try:
        names = os.listdir(p)
    except OSError:
        return False
    return not names or (names == [SWAP_MARKER] and got is not None and m["nonce"].startswith(got))


def _remove_swap_dir(d: Path) -> None:
    """Delete a swap sibling, its marker last: killed halfway, what is left is still provably lightcl's."""
    with contextlib.suppress(OSError):
        for name in os.listdir(d):
            if name != SWAP_MARKER:
                p = d / name
                if stat.S_ISDIR(os.lstat(p).st_mode):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(d / SWAP_MARKER)
        os.rmdir(d)


def _dir_nonce(d: Path) -> str:
    """The nonce in ``d``'s marker, written now (a finished directory carries none), before ``d`` is renamed
    aside: recovery can then prove the ``.old-*`` sibling is lightcl's."""
    nonce = secrets.token_hex(8)
    _write_marker(d, nonce)
    _fsync_dir(d)
    return nonce


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link ``src`` (a file, link or whole directory tree) to ``dst``: no byte is copied or lost
    (copied where the file system has no hard links; a FIFO or device there is then refused)."""
    if stat.S_ISDIR(os.lstat(src).st_mode):
        os.mkdir(dst)
        for name in os.listdir(src):
            _link_tree(src / name, dst / name)
    else:
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:  # a file system without hard links (FAT on an SD card): copy it instead
            shutil.copy2(src, dst, follow_symlinks=False)


def _carry_foreign(dest: Path, tmp: Path, owned: set[str]) -> list[str]:
    """Names in ``dest`` that lightcl did not write there go into the new version (hard links), so a
    save never deletes a user's file (``lightcl learn --json STATE/results.json`` used to vanish at the
    next save)."""
    try:
        names = sorted(os.listdir(dest))
    except (FileNotFoundError, NotADirectoryError):
        return []
    kept = []
    for name in names:
        if name in owned or name == SWAP_MARKER:
            continue
        if os.path.lexists(tmp / name):
            raise StateError(f"{dest / name} is not a file lightcl wrote, and the new version has one of that name; "
                             "move it away and retry (nothing was changed)")
        try:
            _link_tree(dest / name, tmp / name)
        except (OSError, shutil.Error) as e:
            raise StateError(f"cannot keep {dest / name} (not lightcl's) in the new version of {dest}: "
                             f"{e.strerror or e}; move it away and retry (nothing was changed)") from None
        kept.append(name)
    return kept


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
def atomic_directory(dest: str | os.PathLike,
                     owned: Callable[[Path], set[str]] | None = None) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``dest`` atomically.

    ``dest`` always holds either the complete old version or the complete new one. The old one
    is moved to ``.dest.old-*`` for the instant between the two renames; ``recover_directory``
    puts it back if a crash lands exactly there. ``owned(dest)`` names the entries of the current
    ``dest`` that lightcl wrote; every other entry is carried into the new version (hard links).
    Without ``owned``, ``dest`` must not hold anything else than lightcl's files (the caller checked).
    """
    dest = Path(dest).absolute()
    nonce = secrets.token_hex(8)
    tag = f"{os.getpid()}-{_my_token()}-"
    tmp = dest.parent / f".{dest.name}.tmp-{tag}{nonce}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        recover_directory(dest)
        if os.path.lexists(dest) and (dest.is_symlink() or not dest.is_dir()):
            raise StateError(f"cannot write {dest}: it exists and is not a directory")
        os.mkdir(tmp, 0o700)
    except OSError as e:
        raise StateError(f"cannot write {dest}: {e.strerror or e}") from e
    old: Path | None = None
    with _registered(tmp):
        try:
            _write_marker(tmp, nonce)
            yield tmp
            if owned is not None and dest.exists():
                _carry_foreign(dest, tmp, owned(dest) | {SWAP_MARKER})
            fsync_tree(tmp)
            if dest.exists():
                old = dest.parent / f".{dest.name}.old-{tag}{_dir_nonce(dest)}-{secrets.token_hex(2)}"
                with _ACTIVE_LOCK:
                    _ACTIVE.add(str(old))
                os.rename(dest, old)
                os.rename(tmp, dest)
                _fsync_dir(dest.parent)
                _remove_swap_dir(old)
            else:
                os.rename(tmp, dest)
                _fsync_dir(dest.parent)
            with contextlib.suppress(OSError):  # the marker's work is done: a finished directory does not carry it
                os.unlink(dest / SWAP_MARKER)
        except BaseException as e:
            _remove_swap_dir(tmp)
            if old is not None and not dest.exists() and old.exists():  # failed between the two renames
                with contextlib.suppress(OSError):
                    os.rename(old, dest)
            if isinstance(e, OSError):  # disk full, permissions: the previous version is intact
                raise StateError(f"cannot write {dest}: {e.strerror or e} (the previous version is kept)") from e
            raise
        finally:
            if old is not None:
                with _ACTIVE_LOCK:
                    _ACTIVE.discard(str(old))


def recover_directory(dest: str | os.PathLike, wait_s: float | None = None) -> None:
    """Finish or roll back an interrupted ``atomic_directory`` swap and drop stale temp dirs.

    Every reader and writer of a state or export calls this first. Only siblings lightcl can prove it
    made (``SWAP_MARKER``) are restored or deleted. Siblings of a writer that is still running (another
    process or thread in the middle of a save) are left alone; if ``dest`` is missing because such a
    writer is between its two renames, wait up to ``wait_s`` (default ``SWAP_WAIT_S``) for it, then roll
    back anyway.
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

    def exists() -> bool:
        return os.path.lexists(dest)

    olds = sorted((p for p in _siblings(dest, "old") if _provably_ours(p)), key=mtime)
    if not exists() and olds:
        deadline = time.monotonic() + (SWAP_WAIT_S if wait_s is None else wait_s)
        while not exists() and any(_owner_alive(p) and p.exists() for p in olds) \
                and time.monotonic() < deadline:
            time.sleep(0.001)
        olds = [p for p in olds if p.exists()]
        if not exists() and olds:
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rename(olds[-1], dest)
                _fsync_dir(parent)
            olds = [p for p in olds if p.exists()]
    for p in olds + [t for t in _siblings(dest, "tmp") if _provably_ours(t)]:
        if not _owner_alive(p):
            _remove_swap_dir(p)


def safe_member(root: str | os.PathLike, name: str) -> Path:
    """Resolve ``name`` inside ``root``; refuse absolute paths, ``..`` escapes and symlinks leading out
    of ``root`` (``meta.json -> /etc/...``), and symlink loops, with one line."""
    try:
        root = Path(root).resolve()
        if not isinstance(name, str) or os.path.isabs(name) or not name or "\0" in name:
            raise IntegrityError(f"refusing file name {name!r} from metadata: must be relative to {root}")
        p = (root / name).resolve()
    except (RuntimeError, OSError) as e:  # "Symlink loop from ..." (RuntimeError before Python 3.13)
        raise IntegrityError(f"cannot resolve {name!r} in {root}: {e}") from None
    if p != root and root not in p.parents:
        raise IntegrityError(f"refusing file name {name!r}: it escapes {root} (absolute, '..' or a symbolic link)")
    return p


def verify_files(root: str | os.PathLike, checksums: dict[str, str], what: str = "directory") -> None:
    """Check each file against the sha256 recorded for it; the error names the file."""
    for name, expected in checksums.items():
        p = safe_member(root, name)
        if not os.path.lexists(p):
            raise StateError(f"{what} {root}: missing file {name}")
        got = sha256_file(p, what=f"{what} file")
        if got != expected:
            raise IntegrityError(
                f"{what} {root}: {name} does not match its recorded sha256 "
                f"(expected {str(expected)[:12]}..., got {got[:12]}...): the file is corrupt or was replaced"
            )


def read_json(path: str | os.PathLike, what: str = "file") -> dict:
    """A JSON object from a regular file of at most ``MAX_JSON_BYTES``; every failure is one typed line."""
    with open_regular(path, what, max_bytes=MAX_JSON_BYTES) as f:
        try:
            data = f.read()
        except OSError as e:
            raise StateError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    obj = loads_json(data, f"{what} {path}")
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what} {path} must hold a JSON object")
    return obj


def read_buffer(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> bytearray:
    """A whole regular file in one writable buffer (``readinto``: no intermediate ``bytes`` copy)."""
    with open_regular(path, what, max_bytes=max_bytes) as f:
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


def check_json_depth(obj: Any, what: str) -> None:
    """Refuse (``InputError``) a value nested deeper than any lightcl reader will read back."""
    if json_depth(obj) > MAX_JSON_DEPTH:
        raise InputError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels: it could be saved but never read "
                         "back; flatten it")
