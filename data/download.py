"""Download with a checksum: the file appears complete and verified, or not at all."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from lightcl.engine.errors import IntegrityError, LightCLError
from lightcl.engine.fileio import open_regular


class DownloadError(LightCLError):
    """The source could not be reached (offline, 404...) or the URL is not an http(s) URL."""


ALLOWED_SCHEMES = ("http", "https")
_HEX_LEN = {"md5": 32, "sha256": 64}


def file_digest(path: str | os.PathLike, algo: str) -> str:
    h = hashlib.new(algo)
    with open_regular(path, "downloaded file", error=IntegrityError) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_checksum(checksum: str) -> tuple[str, str]:
    """``"sha256:<hex>"`` or ``"md5:<hex>"`` (the form upstream datasets publish)."""
    algo, _, hexdigest = str(checksum).partition(":")
    hexdigest = hexdigest.strip().lower()
    if algo not in _HEX_LEN or not re.fullmatch(f"[0-9a-f]{{{_HEX_LEN.get(algo, 0)}}}", hexdigest):
        raise ValueError(f"checksum must look like 'sha256:<64 hex>' or 'md5:<32 hex>', got {checksum!r}")
    return algo, hexdigest


def check_url(url: str) -> str:
    """Only http:// and https:// URLs are fetched (no file://, ftp://, data: ...)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES or not urllib.parse.urlsplit(url).netloc:
        raise DownloadError(f"refusing to download {url!r}: only http:// and https:// URLs are allowed")
    return url


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def download(url: str, dest: str | os.PathLike, checksum: str, timeout: float = 30.0,
             progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` through a temp file; verify; rename. Bad checksum: raise, no file left.

    Raises :class:`DownloadError` when the URL is not http(s) or the source cannot be reached or read,
    :class:`IntegrityError` when the bytes do not match ``checksum``. In both cases neither ``dest`` nor
    a partial file is left behind.
    """
    algo, expected = parse_checksum(checksum)
    check_url(url)
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:  # a file where the folder should be, no permission, disk full
        raise DownloadError(f"cannot write {dest}: {e.strerror or e}") from None
    h = hashlib.new(algo)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except urllib.error.HTTPError as e:
                e.close()
                raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                raise DownloadError(f"could not download {url}: {getattr(e, 'reason', e)}") from None
            with resp:
                # A redirect may lead elsewhere: the final URL must be http(s) too.
                check_url(resp.geturl() or url)
                total = int(resp.headers.get("Content-Length") or 0) or None
                bar = None
                if progress:
                    from tqdm import tqdm

                    bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False)
                try:
                    while True:
                        chunk = resp.read(1 << 16)
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                    raise DownloadError(f"download of {url} broke off: {e}") from None
                finally:
                    if bar is not None:
                        bar.close()
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != expected:
            raise IntegrityError(f"checksum mismatch for {url}: expected {algo} {expected}, got {got}; nothing was kept")
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        return dest
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
