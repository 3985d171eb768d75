"""A learner's state is one directory, written atomically:

- ``head.safetensors``   the head's weights (config in its metadata)
- ``learner.safetensors`` buffer features and targets, vital-channel masks, optimizer state, RNG
- ``state.json``          options, task/class map, progress, metrics, frozen_id, sha256 of each file,
                          and ``self_sha256``: the sha256 of its own canonical JSON (without that key)

No pickle anywhere: safetensors + JSON. ``load`` verifies every checksum and refuses a state that
was trained against another frozen part. Each file is read once and the bytes that were checked are
the bytes deserialised, so a concurrent save cannot slip a file of another version in; a load that
overlaps a save (the directory was swapped meanwhile) is simply read again.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .errors import InputError, IntegrityError, LightCLError, StateError
from .fileio import (atomic_directory, read_buffer, read_json, recover_directory, safe_member, safetensors_bytes,
                     sha256_file, verify_files)
from .head import Head

STATE_FORMAT = "lightcl-state/1"
FILES = ("head.safetensors", "learner.safetensors")
SELF_KEY = "self_sha256"
LOAD_ATTEMPTS = 50  # a load overlapping that many saves in a row gives up


def _doc_digest(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != SELF_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()


def check_state_path(directory: str | Path) -> None:
    """``save`` swaps the whole directory: only ever replace nothing, an empty directory or a learner state
    (``lightcl learn --state ~/Documents`` must not wipe ``~/Documents``). Raises :class:`InputError`."""
    directory = Path(directory)
    if directory.is_symlink():
        raise InputError(f"state path {directory} is a symbolic link; pass the real directory")
    if not directory.exists():
        return
    if not directory.is_dir():
        raise InputError(f"state path {directory} exists and is not a directory; refusing to replace it")
    names = {p.name for p in directory.iterdir()}
    if not names or names <= {*FILES, "state.json"}:
        return  # empty, or a (possibly damaged) learner state
    try:
        if read_json(directory / "state.json").get("format") == STATE_FORMAT:
            return
    except LightCLError:
        pass
    raise InputError(f"state path {directory} holds other files ({', '.join(sorted(names)[:5])}"
                     f"{', ...' if len(names) > 5 else ''}) and is not a learner state; refusing to replace it "
                     "(choose a new or empty directory)")


def save_state(learner, directory: str | Path) -> Path:
    directory = Path(directory)
    check_state_path(directory)
    with atomic_directory(directory) as tmp:
        learner.head.save(tmp / "head.safetensors")
        tensors = learner.memory.tensors()
        params = list(learner.head.parameters())
        for i, p in enumerate(params):
            st = learner.optimizer.state.get(p, {})
            mb = st.get("momentum_buffer")
            if mb is not None:
                tensors[f"optim.{i}.momentum_buffer"] = mb.detach().cpu().contiguous()
        tensors["rng.generator"] = learner.generator.get_state()
        # train-mode frozen BN: the drifted statistics of the frozen part are learned state too
        tensors.update({f"frozen_bn.{k}": v.detach().cpu().contiguous()
                        for k, v in learner.frozen_statistics().items()})
        if learner._last_features is not None:
            tensors["task.last_features"] = learner._last_features.detach().cpu().contiguous()
        (tmp / "learner.safetensors").write_bytes(safetensors_bytes(tensors))
        doc = {
            "format": STATE_FORMAT,
            "config": asdict(learner.config),
            "tasks": [[t, cs] for t, cs in learner.tasks.items()],
            "class_index": [[c, i] for c, i in learner.class_index.items()],
            "current_task": learner.current_task,
            "pending_capture": learner._pending_capture,
            "finished_tasks": list(learner.finished_tasks),
            "counters": dict(learner.counters),
            "metrics": learner.metrics,
            "extra": learner.extra,
            "memory_seen": learner.memory.seen,
            "frozen_id": learner.frozen_id,
            "frozen_bn": learner.frozen_bn,
            "files": {name: sha256_file(tmp / name) for name in FILES},
        }
        try:
            doc[SELF_KEY] = _doc_digest(doc)
            text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        except (TypeError, ValueError) as e:
            raise InputError(f"learner state is not JSON-serialisable (learner.extra holds JSON values only): {e}") from None
        (tmp / "state.json").write_text(text)
    return directory


def _read_doc(directory: Path) -> dict:
    recover_directory(directory)
    if not directory.is_dir():
        raise StateError(f"no learner state at {directory}")
    doc = read_json(directory / "state.json", "learner state")
    if doc.get("format") != STATE_FORMAT:
        raise IntegrityError(f"{directory}/state.json is not a lightcl learner state (format {doc.get('format')!r})")
    if doc.get(SELF_KEY) != _doc_digest(doc):
        raise IntegrityError(f"{directory}/state.json does not match its own recorded sha256 ({SELF_KEY}): "
                             "the file is corrupt or was edited")
    files = doc.get("files")
    if not isinstance(files, dict) or set(files) != set(FILES):
        raise IntegrityError(f"{directory}/state.json: file list must be exactly {list(FILES)}")
    return doc


def _dir_identity(directory: Path):
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _consistent(directory: Path, read):
    """Run ``read()``; if it fails while a concurrent save swapped the directory, read again."""
    for attempt in range(LOAD_ATTEMPTS):
        before = _dir_identity(directory)
        try:
            return read()
        except StateError:
            after = _dir_identity(directory)
            if attempt == LOAD_ATTEMPTS - 1 or after == before:  # nothing moved: a real error
                raise
            time.sleep(min(0.05, 0.001 * (attempt + 1)))
    raise AssertionError("unreachable")


def read_state_doc(directory: str | Path) -> dict:
    """``state.json`` of a state after checking it and every file it lists against their sha256."""
    directory = Path(directory)

    def read():
        doc = _read_doc(directory)
        verify_files(directory, doc["files"], "learner state")
        return doc

    return _consistent(directory, read)


def _read_verified(directory: Path) -> tuple[dict, dict[str, bytes]]:
    doc = _read_doc(directory)
    blobs = {}
    for name in FILES:
        path = safe_member(directory, name)
        try:
            data = read_buffer(path)
        except FileNotFoundError:
            raise StateError(f"learner state {directory}: missing file {name}") from None
        except OSError as e:
            raise StateError(f"learner state {directory}: cannot read {name} ({e})") from None
        got = hashlib.sha256(data).hexdigest()
        if got != doc["files"][name]:
            raise IntegrityError(
                f"learner state {directory}: {name} does not match the sha256 state.json records for it (expected "
                f"{str(doc['files'][name])[:12]}..., got {got[:12]}...): {name} is corrupt or was replaced, or "
                "state.json belongs to another state")
        blobs[name] = data
    return doc, blobs


def load_state(cls, directory: str | Path, extractor, device: str | None = None):
    directory = Path(directory)
    doc, blobs = _consistent(directory, lambda: _read_verified(directory))
    want = doc.get("frozen_id")
    have = getattr(extractor, "frozen_id", None)
    if want and have and want != have:
        raise IntegrityError(
            f"state {directory} was trained against frozen part {want[:12]}..., but this extractor runs "
            f"{have[:12]}...: load it with the export it was learned on")
    cls.check_frozen_bn(doc.get("frozen_bn"), extractor, directory)
    try:
        return _build(cls, directory, doc, blobs, extractor, device)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise IntegrityError(f"{directory}/state.json is malformed ({type(e).__name__}: {e})") from None


def _build(cls, directory: Path, doc: dict, blobs: dict[str, bytes], extractor, device: str | None):
    from safetensors.torch import load

    head = Head.from_bytes(blobs["head.safetensors"], where=str(directory / "head.safetensors"))
    try:
        tensors = load(bytes(blobs["learner.safetensors"]))
    except Exception as e:
        raise IntegrityError(f"{directory}/learner.safetensors is unreadable ({e})") from None
    config = dict(doc["config"])
    if device is not None:
        config["device"] = device
    reset = config.pop("reset_classifier", True)
    try:
        learner = cls(extractor, head, reset_classifier=False, **config)
    except InputError as e:
        raise IntegrityError(f"{directory}/state.json: unusable options ({e})") from None
    learner.config.reset_classifier = reset
    learner.tasks = {int(t): [int(c) for c in cs] for t, cs in doc["tasks"]}
    learner.class_index = {int(c): int(i) for c, i in doc["class_index"]}
    learner.current_task = None if doc["current_task"] is None else int(doc["current_task"])
    learner._pending_capture = bool(doc.get("pending_capture", False))
    learner.finished_tasks = [int(t) for t in doc["finished_tasks"]]
    learner.counters.update({str(k): int(v) for k, v in doc.get("counters", {}).items()})
    learner.metrics = doc.get("metrics", learner.metrics)
    learner.extra = doc.get("extra", {})
    if learner.head.num_classes < len(learner.class_index):
        raise IntegrityError(f"{directory}: the head has {learner.head.num_classes} outputs for "
                             f"{len(learner.class_index)} classes")
    learner.memory.load_tensors({k: v.to(learner.device) for k, v in tensors.items()
                                 if k.split(".")[0] in ("buffer", "target", "mask")})
    learner.memory.seen = int(doc.get("memory_seen", 0))
    if "rng.generator" in tensors:
        learner.generator.set_state(tensors["rng.generator"])
    frozen_stats = {k[len("frozen_bn."):]: v for k, v in tensors.items() if k.startswith("frozen_bn.")}
    if frozen_stats:
        learner.extractor.load_statistics(frozen_stats)
    if "task.last_features" in tensors:
        learner._last_features = tensors["task.last_features"].to(learner.device)
    params = list(learner.head.parameters())
    for i, p in enumerate(params):
        key = f"optim.{i}.momentum_buffer"
        if key in tensors:
            if tensors[key].shape != p.shape:
                raise IntegrityError(f"{directory}/learner.safetensors: {key} has shape {list(tensors[key].shape)}, "
                                     f"the parameter {list(p.shape)}")
            learner.optimizer.state[p]["momentum_buffer"] = tensors[key].to(learner.device)
    return learner
