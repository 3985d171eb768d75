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
from .fileio import (SWAP_MARKER, atomic_directory, check_json_depth, read_buffer, read_json, recover_directory,
                     safe_member, safetensors_bytes, sha256_file, verify_files)
from .head import Head

STATE_FORMAT = "lightcl-state/1"
FILES = ("head.safetensors", "learner.safetensors")
SELF_KEY = "self_sha256"
LOAD_ATTEMPTS = 50  # a load overlapping that many saves in a row gives up
OWNED = frozenset({*FILES, "state.json", SWAP_MARKER})  # what a save replaces; anything else in the directory is kept
MAX_FILE_BYTES = 1 << 34  # 16 GiB: a state file bigger than this is not one lightcl wrote
INT64 = (-(1 << 63), (1 << 63) - 1)


def owned_names(directory: str | Path | None = None) -> set[str]:
    """Names in a state directory that lightcl writes (``--json`` must not point at one of them)."""
    return set(OWNED)


def _doc_digest(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != SELF_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()


def check_state_path(directory: str | Path) -> None:
    """``save`` swaps the whole directory: only ever replace nothing, an empty directory or a learner state
    (``lightcl learn --state ~/Documents`` must not wipe ``~/Documents``). Raises :class:`InputError`."""
    directory = Path(directory)
    recover_directory(directory)  # a save killed between its two renames: put the state back before anyone looks
    if directory.is_symlink():
        raise InputError(f"state path {directory} is a symbolic link; pass the real directory")
    if not directory.exists():
        return
    if not directory.is_dir():
        raise InputError(f"state path {directory} exists and is not a directory; refusing to replace it")
    try:
        names = {p.name for p in directory.iterdir()}
    except OSError as e:
        raise InputError(f"state path {directory} cannot be listed ({e.strerror or e})") from None
    if not names or names <= OWNED:
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
    check_json_depth(learner.extra, "learner.extra")
    with atomic_directory(directory, owned=owned_names) as tmp:
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
        except (TypeError, ValueError, RecursionError) as e:
            raise InputError(f"learner state is not JSON-serialisable (learner.extra holds JSON values only): {e}") from None
        (tmp / "state.json").write_text(text)
    return directory


def _read_doc(directory: Path) -> dict:
    recover_directory(directory)
    if not directory.is_dir():
        raise StateError(f"no learner state at {directory}")
    doc = read_json(safe_member(directory, "state.json"), "learner state")
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
            data = read_buffer(path, f"learner state file {name}", max_bytes=MAX_FILE_BYTES)
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
    except LightCLError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OverflowError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise IntegrityError(f"{directory}: malformed state ({type(e).__name__}: {first})") from None


def _int(v, where: str, lo: int = INT64[0], hi: int = INT64[1]) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise IntegrityError(f"{where} must be an integer in [{lo}, {hi}], got {str(v)[:40]!r}")
    return v


def _list(v, where: str) -> list:
    if not isinstance(v, list):
        raise IntegrityError(f"{where} must be a JSON list, got {type(v).__name__}")
    return v


def _check_doc(where: str, doc: dict, num_classes: int) -> None:
    """Every field of a (re-signed) ``state.json`` has the type and range the learner relies on."""
    if not isinstance(doc.get("config"), dict):
        raise IntegrityError(f"{where}: 'config' must be a JSON object")
    tasks: dict[int, list[int]] = {}
    for item in _list(doc.get("tasks"), f"{where}: tasks"):
        if not isinstance(item, list) or len(item) != 2:
            raise IntegrityError(f"{where}: each task must be [task_id, [class, ...]]")
        t = _int(item[0], f"{where}: task id")
        if t in tasks:
            raise IntegrityError(f"{where}: task {t} listed twice")
        tasks[t] = [_int(c, f"{where}: class id of task {t}") for c in _list(item[1], f"{where}: classes of task {t}")]
    seen_classes = [c for cs in tasks.values() for c in cs]
    index: dict[int, int] = {}
    for item in _list(doc.get("class_index"), f"{where}: class_index"):
        if not isinstance(item, list) or len(item) != 2:
            raise IntegrityError(f"{where}: each class_index entry must be [class, index]")
        c = _int(item[0], f"{where}: class id")
        index[c] = _int(item[1], f"{where}: index of class {c}", 0, max(0, num_classes - 1))
    if len(set(index.values())) != len(index) or len(index) != len(doc["class_index"]):
        raise IntegrityError(f"{where}: class_index maps two classes to one output (or lists a class twice)")
    if set(seen_classes) != set(index) or len(seen_classes) != len(set(seen_classes)):
        raise IntegrityError(f"{where}: the tasks' classes and class_index disagree")
    cur = doc.get("current_task")
    if cur is not None and _int(cur, f"{where}: current_task") not in tasks:
        raise IntegrityError(f"{where}: current_task {cur} is not a known task")
    fin = [_int(t, f"{where}: finished task") for t in _list(doc.get("finished_tasks"), f"{where}: finished_tasks")]
    if len(set(fin)) != len(fin) or not set(fin) <= set(tasks):
        raise IntegrityError(f"{where}: finished_tasks must be distinct known tasks")
    counters = doc.get("counters", {})
    if not isinstance(counters, dict):
        raise IntegrityError(f"{where}: counters must be a JSON object")
    for k, v in counters.items():
        _int(v, f"{where}: counter {k}", 0)
    for key in ("metrics", "extra"):
        if key in doc and not isinstance(doc[key], dict):
            raise IntegrityError(f"{where}: {key} must be a JSON object")
    _int(doc.get("memory_seen", 0), f"{where}: memory_seen", 0)
    if not isinstance(doc.get("pending_capture", False), bool):
        raise IntegrityError(f"{where}: pending_capture must be true or false")


def _check_tensors(where: str, tensors: dict, learner) -> None:
    """Every tensor of a (re-signed) ``learner.safetensors``: known name, dtype, shape, finite, in range."""
    head = learner.head
    was = head.training
    head.eval()
    try:
        with torch.no_grad():
            _, taps = head(torch.zeros(1, *head.in_features, device=learner.device), return_taps=True)
    finally:
        head.train(was)
    tap_shapes = {k: tuple(v.shape[1:]) for k, v in taps.items()}
    n_params = len(list(head.parameters()))
    buf = [k for k in ("buffer.features", "buffer.labels", "buffer.origin", "buffer.target_valid") if k in tensors]
    if buf and len(buf) != 4:
        raise IntegrityError(f"{where}: buffer tensors incomplete ({', '.join(buf)})")
    n = None
    if buf:
        f = tensors["buffer.features"]
        n = int(f.shape[0]) if f.dim() else -1
        if f.dtype != torch.float32 or tuple(f.shape[1:]) != tuple(head.in_features) or not bool(torch.isfinite(f).all()):
            raise IntegrityError(f"{where}: buffer.features must be finite float32 [N, {list(head.in_features)}]")
        if n > learner.config.buffer_size:
            raise IntegrityError(f"{where}: {n} buffered samples for a buffer of {learner.config.buffer_size}")
        for k, dt in (("buffer.labels", torch.int64), ("buffer.origin", torch.int64), ("buffer.target_valid", torch.uint8)):
            if tensors[k].dtype != dt or list(tensors[k].shape) != [n]:
                raise IntegrityError(f"{where}: {k} must be {dt} [{n}], got {tensors[k].dtype} {list(tensors[k].shape)}")
        if not set(tensors["buffer.labels"].tolist()) <= set(learner.class_index):
            raise IntegrityError(f"{where}: buffer.labels holds classes the state never learned")
    images = tensors.get("buffer.images")
    if images is not None:  # kept only for batch-dependent extractors (frozen_bn="train"): the buffer's own pass
        shape = getattr(learner.extractor, "input_shape", None)
        if n is None or images.dtype != torch.float32 or images.dim() != 4 or images.shape[0] != n \
                or (shape is not None and tuple(images.shape[1:]) != tuple(shape)) or not bool(torch.isfinite(images).all()):
            raise IntegrityError(f"{where}: buffer.images must be finite float32 [{n}, C, H, W] images of the buffer")
    for k, v in tensors.items():
        kind, _, rest = k.partition(".")
        if kind == "buffer":
            continue
        if kind == "target":
            if n is None or rest not in tap_shapes or v.dtype != torch.float32 or v.dim() < 1 or v.shape[0] != n:
                raise IntegrityError(f"{where}: {k} does not fit the head's taps or the buffer")
            if rest == "logits":
                ok = v.dim() == 2 and v.shape[1] <= head.num_classes
            else:
                ok = tuple(v.shape[1:]) == tap_shapes[rest]
            if not ok or not bool(torch.isfinite(v).all()):
                raise IntegrityError(f"{where}: {k} has shape {list(v.shape)}, the head's tap gives {list(tap_shapes[rest])}")
        elif kind == "mask":
            if rest not in tap_shapes or rest == "logits" or v.dtype != torch.uint8 or list(v.shape) != [tap_shapes[rest][0]] \
                    or bool((v > 1).any()):
                raise IntegrityError(f"{where}: {k} must be a 0/1 uint8 mask of the tap's channels")
        elif kind == "rng":
            ref = torch.Generator().get_state()
            if k != "rng.generator" or v.dtype != ref.dtype or v.shape != ref.shape:
                raise IntegrityError(f"{where}: {k} is not a generator state ({v.dtype} {list(v.shape)}, "
                                     f"expected {ref.dtype} {list(ref.shape)})")
        elif kind == "optim":
            idx, _, what = rest.partition(".")
            if what != "momentum_buffer" or not idx.isdigit() or int(idx) >= n_params or v.dtype != torch.float32:
                raise IntegrityError(f"{where}: unexpected tensor {k}")
        elif kind == "frozen_bn":  # the frozen part's drifted BN statistics (frozen_bn="train"); shapes checked on use
            if v.dtype not in (torch.float32, torch.int64) or not bool(torch.isfinite(v.float()).all()):
                raise IntegrityError(f"{where}: {k} must be a finite float32/int64 BN statistic")
        elif k == "task.last_features":
            if v.dtype != torch.float32 or v.dim() != 4 or tuple(v.shape[1:]) != tuple(head.in_features):
                raise IntegrityError(f"{where}: task.last_features must be float32 [N, {list(head.in_features)}]")
        else:
            raise IntegrityError(f"{where}: unexpected tensor {k}")


def _build(cls, directory: Path, doc: dict, blobs: dict[str, bytes], extractor, device: str | None):
    from safetensors.torch import load

    head = Head.from_bytes(blobs["head.safetensors"], where=str(directory / "head.safetensors"))
    try:
        tensors = load(bytes(blobs["learner.safetensors"]))
    except Exception as e:
        raise IntegrityError(f"{directory}/learner.safetensors is unreadable ({e})") from None
    _check_doc(f"{directory}/state.json", doc, head.num_classes)
    config = dict(doc["config"])
    if device is not None:
        config["device"] = device
    reset = config.pop("reset_classifier", True)
    try:
        learner = cls(extractor, head, reset_classifier=False, **config)
    except (InputError, RuntimeError, OverflowError) as e:  # torch.manual_seed(2**70) is a RuntimeError
        raise IntegrityError(f"{directory}/state.json: unusable options ({str(e).splitlines()[0][:200]})") from None
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
    _check_tensors(f"{directory}/learner.safetensors", tensors, learner)
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
