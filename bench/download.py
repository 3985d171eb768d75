"""Download with a checksum: the file appears complete and verified, or not at all."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from lightcl.engine.errors import IntegrityError, LightCLError


class DownloadError(LightCLError):
    """The source could not be reached (offline, 404...)."""


def file_digest(path: str | os.PathLike, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_checksum(checksum: str) -> tuple[str, str]:
    """``"sha256:<hex>"`` or ``"md5:<hex>"`` (the form upstream datasets publish)."""
    algo, _, hexdigest = checksum.partition(":")
    if algo not in ("sha256", "md5") or not hexdigest:
        raise ValueError(f"checksum must look like 'sha256:<hex>' or 'md5:<hex>', got {checksum!r}")
    return algo, hexdigest.lower()


def download(url: str, dest: str | os.PathLike, checksum: str, timeout: float = 30.0,
             progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` through a temp file; verify; rename. Bad checksum: raise, no file left."""
    algo, expected = parse_checksum(checksum)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    h = hashlib.new(algo)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError) as e:
                raise DownloadError(f"could not download {url}: {getattr(e, 'reason', e)}") from None
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                bar = None
                if progress:
                    from tqdm import tqdm

                    bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False)
                while True:
                    chunk = resp.read(1 << 16)
                    if not chunk:
                        break
                    out.write(chunk)
                    h.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                if bar is not None:
                    bar.close()
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != expected:
            raise IntegrityError(f"checksum mismatch for {url}: expected {algo} {expected}, got {got}; nothing was kept")
        os.replace(tmp, dest)
        return dest
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
