"""Reading an export directory on the device: ``meta.json``, integrity of every file, the head.

An export directory (``lightcl export``) holds::

    frozen.onnx          frozen part, eval-mode BN folded, dynamic batch axis
    frozen.safetensors   the same weights for the torch backend (block specs in its metadata)
    head.safetensors     the trainable deep part + classifier (Head.save)
    frozen.int8.onnx     optional: static QDQ int8 copy of frozen.onnx
    *.plan               optional: TensorRT engines (named after TensorRT version, GPU, precision, ONNX sha)
    meta.json            format "lightcl-export/1", shapes, normalisation, versions, parity figures,
                         and "files": {name: sha256} for every file above

``frozen_id`` (the sha256 of ``frozen.onnx``) is the identity a learned state binds to: features
from another frozen part are meaningless to a head trained on these.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import IntegrityError, StateError
from .fileio import read_json, safe_member, sha256_file, verify_files

EXPORT_FORMAT = "lightcl-export/1"
META_NAME = "meta.json"
REQUIRED_FILES = ("frozen.onnx", "frozen.safetensors", "head.safetensors")
REQUIRED_KEYS = ("format", "split", "input_shape", "feature_shape", "normalization", "files", "frozen_id")


def load_export_meta(export_dir: str | Path, verify: bool | str | list[str] = True) -> dict[str, Any]:
    """Read ``meta.json`` and check it is an export we understand.

    ``verify``: ``True`` checks the sha256 of every file listed in ``meta["files"]``; a list checks
    just those names; ``False`` checks nothing (use only when the caller verifies). Raises
    :class:`StateError` for a missing/incomplete directory and :class:`IntegrityError` (naming the
    file) for a file that does not match its recorded sha256.
    """
    d = Path(export_dir)
    if not d.is_dir():
        raise StateError(f"export directory not found: {d} (make one with `lightcl export CKPT --out {d}`)")
    meta = read_json(d / META_NAME, "export metadata")
    if meta.get("format") != EXPORT_FORMAT:
        raise IntegrityError(f"{d / META_NAME}: not a lightcl export (format {meta.get('format')!r}, "
                             f"expected {EXPORT_FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise IntegrityError(f"{d / META_NAME}: missing keys {', '.join(missing)}")
    files = meta["files"]
    if not isinstance(files, dict):
        raise IntegrityError(f"{d / META_NAME}: 'files' must map file names to sha256")
    absent = [f for f in REQUIRED_FILES if f not in files]
    if absent:
        raise IntegrityError(f"{d / META_NAME}: no checksum recorded for {', '.join(absent)}")
    if meta["frozen_id"] != files["frozen.onnx"]:
        raise IntegrityError(f"{d / META_NAME}: frozen_id does not equal the sha256 recorded for frozen.onnx")
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
    meta = load_export_meta(export_dir, verify=["frozen.onnx"])
    if meta["frozen_id"] != expected:
        raise IntegrityError(
            f"export {export_dir} holds frozen part {meta['frozen_id'][:12]}..., but the state was learned against "
            f"{expected[:12]}...: features would not match")


def load_head(export_dir: str | Path, map_location: str = "cpu", meta: dict[str, Any] | None = None):
    """The trainable head of an export, after checking ``head.safetensors`` against its sha256."""
    from .head import Head

    if meta is None:
        meta = load_export_meta(export_dir, verify=["head.safetensors"])
    else:
        verify_files(export_dir, {"head.safetensors": meta["files"]["head.safetensors"]}, what="export")
    head = Head.load(export_file(export_dir, meta, "head.safetensors"), map_location=map_location)
    if list(head.in_features) != [int(v) for v in meta["feature_shape"]]:
        raise IntegrityError(f"export {export_dir}: head expects features {list(head.in_features)}, "
                             f"meta.json says the frozen part gives {meta['feature_shape']}")
    return head


def file_sha256(export_dir: str | Path, name: str) -> str:
    return sha256_file(safe_member(export_dir, name))
