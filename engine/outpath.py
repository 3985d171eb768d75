"""The one rule for every file lightcl writes on a user's behalf (``--json``, ``--out``, logs, records,
reports, plots): what may be replaced, and what never is.

* A target that exists must be a regular file (lightcl replaces it atomically: ``engine.fileio``). A
  directory, FIFO, socket, device, symbolic link (to anywhere, dangling, or a loop) is refused with one
  line: ``--json /dev/null`` run as root used to replace the machine's own ``/dev/null`` with a regular file.
* Under a directory lightcl writes into (``root``: the suite's ``OUT``), no component between ``root`` and
  the file may be a symbolic link or anything but a directory: a link planted at ``OUT/logs`` or
  ``OUT/logs/sgd-seed0.log`` is never followed out of ``OUT``.
* The folder a target goes into must be a directory or creatable (a path under a regular file, or through a
  symlink loop, is one line, not a traceback).

Streams that cannot be written atomically (a worker's log) are opened with :func:`open_stream`: the same
check, then ``O_NOFOLLOW | O_NONBLOCK`` and ``fstat`` on what was opened, so a link or FIFO swapped in after
the check is refused too. Python 3.8-compatible (device side).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Optional, Type, Union

from .errors import InputError, LightCLError

PathLike = Union[str, "os.PathLike[str]"]


def kind_of(mode: int) -> str:
    """'a directory', 'a FIFO', ... for an ``st_mode`` that is not a regular file."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _lstat(p: str) -> Optional[os.stat_result]:
    try:
        return os.lstat(p)
    except FileNotFoundError:
        return None


def check_output_file(path: PathLike, what: str = "output", root: Optional[PathLike] = None,
                      error: Type[LightCLError] = InputError) -> Path:
    """Check that ``path`` may be written (created, or a regular file replaced) under the rule above;
    returns it. ``root``: the directory lightcl writes into; ``path`` must lie inside it and no component
    below ``root`` may be a link. Raises ``error`` (one line); nothing is created."""
    raw = os.fspath(path)
    p = Path(raw)
    if not p.name or p.name in (".", "..") or str(raw).endswith(("/", os.sep)) or "\0" in str(raw):
        raise error(f"{what} {str(raw)[:200]!r}: give a file name, not a directory")
    try:
        st = _lstat(str(p))
    except OSError as e:  # ELOOP in a parent, ENOTDIR (a parent is a file), EACCES
        raise error(f"{what} {p} cannot be written ({e.strerror or e})") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {p} is {kind_of(st.st_mode)}; lightcl writes only regular files and never replaces "
                    "or follows anything else: choose another path")
    if root is not None:
        _check_below(Path(os.fspath(root)), p.parent, what, p, error)
    else:
        _check_parent(p.parent, what, p, error)
    return p


def _check_parent(parent: Path, what: str, p: Path, error: Type[LightCLError]) -> None:
    """The nearest existing ancestor of ``parent`` must be a directory (links a user typed are followed)."""
    q = parent if str(parent) else Path(".")
    while True:
        try:
            st = os.stat(q)
        except FileNotFoundError:
            if q.parent == q:
                return
            q = q.parent
            continue
        except OSError as e:  # ELOOP: a symlink loop on the way
            raise error(f"{what} {p} cannot be written: its folder {q} cannot be reached "
                        f"({e.strerror or e})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise error(f"{what} {p} cannot be written: {q} is {kind_of(st.st_mode)}, not a directory")
        return


def _check_below(root: Path, parent: Path, what: str, p: Path, error: Type[LightCLError]) -> None:
    """Every component from ``root`` down to ``parent``: absent (to be created) or a real directory."""
    try:
        rel = os.path.relpath(os.path.abspath(parent), os.path.abspath(root))
    except ValueError:
        rel = ".."
    if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
        raise error(f"{what} {p} is outside {root}, the directory lightcl writes into")
    q = root
    for part in ([] if rel == "." else Path(rel).parts):
        q = q / part
        try:
            st = _lstat(str(q))
        except OSError as e:
            raise error(f"{what} {p} cannot be written ({e.strerror or e})") from None
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise error(f"{what} {p} cannot be written: {q} is {kind_of(st.st_mode)}, not a directory; lightcl "
                        f"does not follow links out of {root}")


def check_output_dir(path: PathLike, what: str = "--out", error: Type[LightCLError] = InputError) -> Path:
    """A directory lightcl writes into: absent (created later), or a real directory; not a link, a file, a
    FIFO, a device, nor under a regular file or through a symlink loop. Returns it."""
    p = Path(os.fspath(path))
    try:
        st = _lstat(str(p))
    except OSError as e:
        raise error(f"{what} {p} cannot be used ({e.strerror or e})") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise error(f"{what} {p} is a symbolic link; pass the real directory")
        if not stat.S_ISDIR(st.st_mode):
            raise error(f"{what} {p} exists and is {kind_of(st.st_mode)}, not a directory")
        return p
    _check_parent(p.parent, what, p, error)
    return p


def ensure_dir(path: PathLike, what: str = "output folder", root: Optional[PathLike] = None,
               error: Type[LightCLError] = InputError) -> Path:
    """``mkdir -p`` under the rule: refuses a file or link in the way, one line for any OSError."""
    p = Path(os.fspath(path))
    if root is not None:
        _check_below(Path(os.fspath(root)), p, what, p, error)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise error(f"{what} {p} cannot be created: something that is not a directory is in the way") from None
    except OSError as e:
        raise error(f"{what} {p} cannot be created ({e.strerror or e})") from None
    st = os.lstat(p)
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {p} is {kind_of(st.st_mode)}, not a directory")
    return p


def open_stream(path: PathLike, what: str = "log", root: Optional[PathLike] = None,
                error: Type[LightCLError] = InputError) -> IO[str]:
    """Open ``path`` for writing text from the start (a log that grows as a run goes), under the rule:
    never through a link (``O_NOFOLLOW``), never a FIFO or device (opened non-blocking, then ``fstat``);
    truncated only once it is known to be a regular file."""
    p = check_output_file(path, what, root=root, error=error)
    ensure_dir(p.parent, f"folder of {what}", root=root, error=error)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(str(p), flags, 0o644)
    except OSError as e:  # ELOOP: a link swapped in since the check; ENXIO: a FIFO without a reader
        raise error(f"{what} {p} cannot be written ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {p} is {kind_of(st.st_mode)}; refusing to write it")
        os.ftruncate(fd, 0)
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "w")
    except BaseException:
        os.close(fd)
        raise
