"""Reading an export directory on the device: ``meta.json``, integrity of every file, the head.

An export directory (``lightcl export``) holds::

    frozen.onnx          frozen part, eval-mode BN folded, dynamic batch axis, weights inside (no external data)
    frozen.safetensors   the same weights for the torch backend (block specs in its metadata)
    head.safetensors     the trainable deep part + classifier (Head.save)
    frozen.int8.onnx     optional: static QDQ int8 copy of frozen.onnx
    *.plan               optional: TensorRT engines (named after TensorRT version, GPU, precision, ONNX sha)
    meta.json            format "lightcl-export/2", shapes, normalisation, versions, parity figures,
                         and "files": {name: sha256} for every file above

``frozen_id`` is the identity a learned state binds to: features from another frozen part are
meaningless to a head trained on these. In format 2 it covers every byte a non-TensorRT backend reads
for the frozen part: the sha256 of the canonical list ``"<sha256>  <name>\\n"`` of ``frozen.onnx``,
``frozen.safetensors`` and ``frozen.int8.onnx`` (when present), see :func:`frozen_id_of`. ONNX files are
handed to onnxruntime as the verified bytes, so an external-data file can never be read beside them.
TensorRT plans are compiled on the device from ``frozen.onnx`` (``lightcl export --add-plan`` adds them later),
so they are checked against ``meta.json`` but are not part of the id.
Format 1 (``frozen_id`` = sha256 of ``frozen.onnx`` alone: ``frozen.safetensors`` could be swapped under a
state unnoticed) is refused with a message saying to re-export.
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

from .errors import IntegrityError, StateError
from .fileio import SWAP_MARKER, read_json, recover_directory, safe_member, sha256_file, verify_files

EXPORT_FORMAT = "lightcl-export/2"
OLD_FORMATS = ("lightcl-export/1",)
META_NAME = "meta.json"
REQUIRED_FILES = ("frozen.onnx", "frozen.safetensors", "head.safetensors")
FROZEN_FILES = ("frozen.onnx", "frozen.safetensors", "frozen.int8.onnx")  # what frozen_id covers
REQUIRED_KEYS = ("format", "split", "input_shape", "feature_shape", "normalization", "files", "frozen_id")
_SHA = re.compile(r"[0-9a-f]{64}")
MAX_SIDE = 1 << 14  # an image side or feature extent beyond this is not an export lightcl made


def frozen_id_of(files: dict[str, str]) -> str:
    """The frozen part's identity from the sha256 of its files (format 2)."""
    lines = "".join(f"{files[n]}  {n}\n" for n in FROZEN_FILES if n in files)
    return hashlib.sha256(("lightcl-frozen/2\n" + lines).encode()).hexdigest()


def owned_names(export_dir: str | Path) -> set[str]:
    """Names in an export directory that lightcl wrote: ``meta.json`` and every file it lists."""
    names = {META_NAME, SWAP_MARKER, *REQUIRED_FILES}
    try:
        files = read_json(Path(export_dir) / META_NAME, "export metadata").get("files")
        if isinstance(files, dict):
            names |= {str(n) for n in files}
    except Exception:  # noqa: BLE001 - an unreadable meta.json names nothing more
        pass
    return names


def _positive_ints(v: Any, n: int, where: str) -> list[int]:
    if not isinstance(v, list) or len(v) != n or any(isinstance(x, bool) or not isinstance(x, int) or not 0 < x <= MAX_SIDE
                                                    for x in v):
        raise IntegrityError(f"{where} must be a list of {n} integers in [1, {MAX_SIDE}], got {str(v)[:80]}")
    return v


def _check_meta(d: Path, meta: dict[str, Any]) -> None:
    """Every value the engine uses from ``meta.json``: shapes, normalisation, checksums, ids."""
    where = d / META_NAME
    shape = _positive_ints(meta["input_shape"], 3, f"{where}: input_shape")
    _positive_ints(meta["feature_shape"], 3, f"{where}: feature_shape")
    norm = meta["normalization"]
    if not isinstance(norm, dict):
        raise IntegrityError(f"{where}: normalization must be a JSON object with mean and std")
    for key in ("mean", "std"):
        v = norm.get(key)
        if not isinstance(v, list) or len(v) != shape[0] or any(
                isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or abs(x) > 1e6 for x in v):
            raise IntegrityError(f"{where}: normalization.{key} must be {shape[0]} finite numbers, got {str(v)[:80]}")
    if any(x <= 0 for x in norm["std"]):
        raise IntegrityError(f"{where}: normalization.std must be > 0, got {norm['std']}")
    files = meta["files"]
    if not isinstance(files, dict):
        raise IntegrityError(f"{where}: 'files' must map file names to sha256")
    for name, sha in files.items():
        if not isinstance(sha, str) or not _SHA.fullmatch(sha):
            raise IntegrityError(f"{where}: the checksum of {name!r} is not a sha256 hex digest")
        safe_member(d, name)
    if not isinstance(meta["frozen_id"], str) or not _SHA.fullmatch(meta["frozen_id"]):
        raise IntegrityError(f"{where}: frozen_id is not a sha256 hex digest")
    onnx = meta.get("onnx", {})
    if not isinstance(onnx, dict) or not isinstance(onnx.get("input_name", "input"), str):
        raise IntegrityError(f"{where}: 'onnx' must be a JSON object with a string input_name")


def load_export_meta(export_dir: str | Path, verify: bool | str | list[str] = True) -> dict[str, Any]:
    """Read ``meta.json`` and check it is an export we understand.

    ``verify``: ``True`` checks the sha256 of every file listed in ``meta["files"]``; a list checks
    just those names; ``False`` checks nothing (use only when the caller verifies). Raises
    :class:`StateError` for a missing/incomplete directory and :class:`IntegrityError` (naming the
    file) for a file that does not match its recorded sha256.
    """
    if not isinstance(export_dir, (str, Path)) or not str(export_dir):
        raise StateError(f"export directory must be a path, got {export_dir!r}")
    d = Path(export_dir)
    recover_directory(d)  # an export interrupted between its two renames is put back first
    if not d.is_dir():
        raise StateError(f"export directory not found: {d} (make one with `lightcl export CKPT --out {d}`)")
    meta = read_json(safe_member(d, META_NAME), "export metadata")
    if meta.get("format") in OLD_FORMATS:
        raise IntegrityError(f"{d / META_NAME}: export format {meta.get('format')!r} was made by an older lightcl, whose frozen_id does "
                             f"not cover frozen.safetensors; re-export it with `lightcl export CKPT --out {d}`")
    if meta.get("format") != EXPORT_FORMAT:
        raise IntegrityError(f"{d / META_NAME}: not a lightcl export (format {str(meta.get('format'))[:40]!r}, "
                             f"expected {EXPORT_FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise IntegrityError(f"{d / META_NAME}: missing keys {', '.join(missing)}")
    _check_meta(d, meta)
    files = meta["files"]
    absent = [f for f in REQUIRED_FILES if f not in files]
    if absent:
        raise IntegrityError(f"{d / META_NAME}: no checksum recorded for {', '.join(absent)}")
    if meta["frozen_id"] != frozen_id_of(files):
        raise IntegrityError(f"{d / META_NAME}: frozen_id does not match the sha256 recorded for the frozen part's files "
                             f"({', '.join(n for n in FROZEN_FILES if n in files)})")
    if verify:
        names = list(files) if verify is True else ([verify] if isinstance(verify, str) else list(verify))
        unknown = [n for n in names if n not in files]
        if unknown:
            raise StateError(f"export {d}: {', '.join(unknown)} not part of this export (files: {', '.join(files)})")
        verify_files(d, {n: files[n] for n in names}, what="export")
    return meta


def export_file(export_dir: str | Path, meta: dict[str, Any], name: str) -> Path:
    """Path of a file the export lists (refuses names escaping the directory)."""
    if name not in meta.get("files", {}):
        raise StateError(f"export {export_dir} has no {name} (files: {', '.join(meta.get('files', {}))})")
    return safe_member(export_dir, name)


def check_frozen_id(export_dir: str | Path, expected: str) -> None:
    """Refuse an export whose frozen part is not the one a state was trained against."""
    meta = load_export_meta(export_dir, verify=[n for n in FROZEN_FILES
                                                if n in load_export_meta(export_dir, verify=False)["files"]])
    if meta["frozen_id"] != expected:
        raise IntegrityError(
            f"export {export_dir} holds frozen part {meta['frozen_id'][:12]}..., but the state was learned against "
            f"{expected[:12]}...: features would not match")


def load_head(export_dir: str | Path, map_location: str = "cpu", meta: dict[str, Any] | None = None):
    """The trainable head of an export, after checking ``head.safetensors`` against its sha256."""
    import hashlib as _h

    from .fileio import read_buffer
    from .head import Head

    if meta is None:
        meta = load_export_meta(export_dir, verify=False)
    path = export_file(export_dir, meta, "head.safetensors")
    try:
        data = read_buffer(path, "export file head.safetensors", max_bytes=1 << 34)
    except OSError as e:
        raise StateError(f"export {export_dir}: cannot read head.safetensors ({e})") from None
    if _h.sha256(data).hexdigest() != meta["files"]["head.safetensors"]:
        raise IntegrityError(f"export {export_dir}: head.safetensors does not match its recorded sha256: the file is "
                             "corrupt or was replaced")
    head = Head.from_bytes(data, map_location=map_location, where=str(path))
    if list(head.in_features) != [int(v) for v in meta["feature_shape"]]:
        raise IntegrityError(f"export {export_dir}: head expects features {list(head.in_features)}, "
                             f"meta.json says the frozen part gives {meta['feature_shape']}")
    return head


def file_sha256(export_dir: str | Path, name: str) -> str:
    return sha256_file(safe_member(export_dir, name))
