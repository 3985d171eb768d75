"""A learner's state is one directory, written atomically. This module owns only that format: which
file holds what, checksums, atomic replacement, recovery, concurrent reads; what the state *is* comes
from ``LightCL.state_dict()`` and goes back through ``LightCL.load_state_dict()``, which check it.

Format ``lightcl-state/3`` (``/2`` with the class map's ``class_map`` entry in state.json: the class names,
their kind, the backbone's kept classes; lightcl.engine.classmap):

- ``head.safetensors``    the head (``Head.save``: weights, config in the metadata)
- ``learner.safetensors`` every other tensor of the state dict: the memory's own entries under their
                          names (``buffer.*``, ``target.<tap>``, ``mask.<tap>``), ``rng.generator``,
                          ``frozen_bn.<name>`` (frozen_statistics), ``task.last_features``, and the
                          optimizer state dict's tensors as ``optim.state.<param>.<key>``, and the
                          feature-replay memory's tensors (when ``replay_budget`` is set) as ``replay.<name>``
- ``state.json``          the JSON entries of the state dict (``memory``: the memory's non-tensor entries;
                          ``replay``: the replay memory's, only in a state that has one;
                          ``optimizer``: its state dict without tensors), ``format``, the sha256 of each
                          file, and ``self_sha256``: the sha256 of its own canonical JSON (without that key)

Format ``lightcl-state/2`` (no ``class_map``: int classes) is still read, as is format ``lightcl-state/1``
(lightcl up to 13d5dc5): the same files, the memory's
``seen`` as ``memory_seen``, and SGD momentum buffers as ``optim.<param>.momentum_buffer`` with the
config's hyperparameters (``tests/data/state_v1`` is one, made by ``tests/data/make_state_v1.py``).
A newer format is refused with one line.

No pickle anywhere: safetensors + JSON. ``load`` verifies every checksum. Each file is read once and
the bytes that were checked are the bytes deserialised, so a concurrent save cannot slip a file of
another version in; a load that overlaps a save (the directory was swapped meanwhile) is read again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, IntegrityError, LightCLError, NonFiniteError, StateError
from .fileio import (SWAP_MARKER, atomic_directory, check_json_depth, read_buffer, read_json, recover_directory,
                     safe_member, safetensors_bytes, sha256_file, verify_files)
from .head import Head

STATE_FORMAT = "lightcl-state/3"
READABLE_FORMATS = ("lightcl-state/1", "lightcl-state/2", STATE_FORMAT)
FILES = ("head.safetensors", "learner.safetensors")
SELF_KEY = "self_sha256"
LOAD_ATTEMPTS = 50  # a load overlapping that many saves in a row gives up
OWNED = frozenset({*FILES, "state.json", SWAP_MARKER})  # what a save replaces; anything else in the directory is kept
MAX_FILE_BYTES = 1 << 34  # 16 GiB: a state file bigger than this is not one lightcl wrote
MEMORY_PREFIXES = ("buffer.", "target.", "mask.")
FILE_KEYS = ("format", "files", SELF_KEY)
OPTIM_TENSOR = re.compile(r"^optim\.state\.(\d{1,9})\.(.+)$")
V1_MOMENTUM = re.compile(r"^optim\.(\d{1,9})\.momentum_buffer$")


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
        if read_json(directory / "state.json").get("format") in READABLE_FORMATS:
            return
    except LightCLError:
        pass
    raise InputError(f"state path {directory} holds other files ({', '.join(sorted(names)[:5])}"
                     f"{', ...' if len(names) > 5 else ''}) and is not a learner state; refusing to replace it "
                     "(choose a new or empty directory)")


def _split(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A learner state dict (without ``head``) -> (tensors of learner.safetensors, JSON entries of state.json)."""
    sd = dict(sd)
    tensors: dict[str, torch.Tensor] = {}
    memory_json = {}
    for k, v in sd.pop("memory").items():
        if isinstance(v, torch.Tensor):
            if not k.startswith(MEMORY_PREFIXES):
                raise InputError(f"memory state entry {k!r} does not start with one of {MEMORY_PREFIXES}")
            tensors[k] = v
        else:
            memory_json[k] = v
    tensors["rng.generator"] = sd.pop("rng")
    replay = sd.pop("replay", None)
    if replay is not None:  # the feature-replay memory: tensors under replay.*, the rest in state.json
        sd["replay"] = {k: v for k, v in replay.items() if not isinstance(v, torch.Tensor)}
        tensors.update({f"replay.{k}": v for k, v in replay.items() if isinstance(v, torch.Tensor)})
    tensors.update({f"frozen_bn.{k}": v for k, v in sd.pop("frozen_statistics").items()})
    last = sd.pop("last_features")
    if last is not None:
        tensors["task.last_features"] = last
    optimizer = sd.pop("optimizer")
    state_json: dict[str, dict[str, Any]] = {}
    for i, st in optimizer["state"].items():
        plain = {}
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.state.{int(i)}.{key}"] = v
            else:
                plain[key] = v
        state_json[str(int(i))] = plain
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in optimizer["param_groups"]]
    doc = {**sd, "memory": memory_json, "optimizer": {"state": state_json, "param_groups": groups}}
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, doc


def check_finite(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    """Refuse, before anything is written, a state that load would refuse: NaN/Inf in a floating tensor."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"refusing to save: {name} holds NaN or Inf values (the learner in memory is "
                                 f"damaged); {directory} is left as it was")


def save_state(learner, directory: str | Path) -> Path:
    directory = Path(directory)
    check_state_path(directory)
    sd = learner.state_dict()
    sd.pop("head")  # head.safetensors is the head's own format (Head.save), which carries its config
    check_json_depth(sd["extra"], "learner.extra")
    tensors, body = _split(sd)
    check_finite({**{f"head.safetensors: {k}": v for k, v in learner.head.state_dict().items()},
                  **{f"learner.safetensors: {k}": v for k, v in tensors.items()}}, directory)
    with atomic_directory(directory, owned=owned_names) as tmp:
        learner.head.save(tmp / "head.safetensors")
        (tmp / "learner.safetensors").write_bytes(safetensors_bytes(tensors))
        doc = {"format": STATE_FORMAT, **body, "files": {name: sha256_file(tmp / name) for name in FILES}}
        try:
            doc[SELF_KEY] = _doc_digest(doc)
            text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        except (TypeError, ValueError, RecursionError) as e:
            raise InputError(f"learner state is not JSON-serialisable (learner.extra holds JSON values only, the "
                             f"optimizer's settings plain numbers): {e}") from None
        (tmp / "state.json").write_text(text)
    return directory


def _read_doc(directory: Path) -> dict:
    recover_directory(directory)
    if not directory.is_dir():
        raise StateError(f"no learner state at {directory}")
    doc = read_json(safe_member(directory, "state.json"), "learner state")
    fmt = doc.get("format")
    if isinstance(fmt, str) and fmt.startswith("lightcl-state/") and fmt not in READABLE_FORMATS:
        raise StateError(f"{directory} is a learner state of format {fmt}, written by a newer lightcl; this one reads "
                         f"{', '.join(READABLE_FORMATS)}: upgrade lightcl to open it")
    if fmt not in READABLE_FORMATS:
        raise IntegrityError(f"{directory}/state.json is not a lightcl learner state (format {fmt!r})")
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


def load_state(cls, directory: str | Path, extractor, device: str | None = None, **options: Any):
    """The learner saved in ``directory``: built from its head and config (``options``: the constructor's
    keyword arguments that are code, not state), then ``load_state_dict``."""
    directory = Path(directory)
    doc, blobs = _consistent(directory, lambda: _read_verified(directory))
    try:
        return _build(cls, directory, doc, blobs, extractor, device, options)
    except LightCLError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OverflowError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise IntegrityError(f"{directory}: malformed state ({type(e).__name__}: {first})") from None


def _join(where: str, doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """state.json + learner.safetensors -> the learner's state dict (format 2 or 1), every name accounted for."""
    v1 = doc["format"] == "lightcl-state/1"
    sd = {k: v for k, v in doc.items() if k not in FILE_KEYS}
    memory: dict[str, Any] = {}
    frozen: dict[str, torch.Tensor] = {}
    optim_tensors: dict[int, dict[str, torch.Tensor]] = {}
    rng = last = None
    replay: dict[str, Any] = {}
    for k, v in tensors.items():
        m = (V1_MOMENTUM if v1 else OPTIM_TENSOR).match(k)
        if k.startswith(MEMORY_PREFIXES):
            memory[k] = v
        elif k.startswith("replay."):
            replay[k[len("replay."):]] = v
        elif k == "rng.generator":
            rng = v
        elif k.startswith("frozen_bn."):
            frozen[k[len("frozen_bn."):]] = v
        elif k == "task.last_features":
            last = v
        elif m:
            optim_tensors.setdefault(int(m.group(1)), {})["momentum_buffer" if v1 else m.group(2)] = v
        else:
            raise IntegrityError(f"{where}: unexpected tensor {k}")
    if rng is None:
        raise IntegrityError(f"{where}: rng.generator is missing")
    if v1:  # what format-1 readers defaulted
        for key, default in (("pending_capture", False), ("counters", {}), ("extra", {}),
                             ("metrics", {"til": [], "cil": [], "tasks": []})):
            sd.setdefault(key, default)
        memory["seen"] = sd.pop("memory_seen", 0)
        optimizer: dict[str, Any] = {"state": optim_tensors, "param_groups": None}  # filled from the config in _build
    else:
        memory_json, optimizer = sd.pop("memory", None), sd.pop("optimizer", None)
        if not isinstance(memory_json, dict) or not isinstance(optimizer, dict) \
                or not isinstance(optimizer.get("state"), dict) or not isinstance(optimizer.get("param_groups"), list):
            raise IntegrityError(f"{where}: memory and optimizer must be JSON objects (optimizer: state, param_groups)")
        memory.update(memory_json)
        state: dict[int, dict[str, Any]] = {}
        for i, st in optimizer["state"].items():
            if not (isinstance(i, str) and i.isdigit() and len(i) < 10) or not isinstance(st, dict):
                raise IntegrityError(f"{where}: optimizer state keys must be parameter indices")
            state[int(i)] = dict(st)
        for i, st in optim_tensors.items():
            state.setdefault(i, {}).update(st)
        optimizer = {"state": state, "param_groups": optimizer["param_groups"]}
    sd.update(memory=memory, optimizer=optimizer, rng=rng, frozen_statistics=frozen, last_features=last)
    if "replay" in sd or replay:
        replay_json = sd.pop("replay", None)
        if not isinstance(replay_json, dict) or any(k in replay for k in replay_json):
            raise IntegrityError(f"{where}: replay tensors need their replay entry in state.json (and vice versa)")
        sd["replay"] = {**replay_json, **replay}
    return sd


def _build(cls, directory: Path, doc: dict, blobs: dict[str, bytes], extractor, device: str | None, options: dict):
    from safetensors.torch import load

    head = Head.from_bytes(blobs["head.safetensors"], where=str(directory / "head.safetensors"))
    try:
        tensors = load(bytes(blobs["learner.safetensors"]))
    except Exception as e:
        raise IntegrityError(f"{directory}/learner.safetensors is unreadable ({e})") from None
    where = str(directory)
    sd = _join(f"{directory}/learner.safetensors", doc, tensors)
    if not isinstance(sd.get("config"), dict):
        raise IntegrityError(f"{directory}/state.json: 'config' must be a JSON object")
    config = dict(sd["config"])
    if device is not None:
        config["device"] = device
    reset = config.pop("reset_classifier", True)
    try:
        learner = cls(extractor, head, reset_classifier=False, _restoring=True, **options, **config)
    except (InputError, RuntimeError, OverflowError, TypeError) as e:  # torch.manual_seed(2**70) is a RuntimeError
        raise IntegrityError(f"{directory}/state.json: unusable options ({str(e).splitlines()[0][:200]})") from None
    learner.config.reset_classifier = reset
    sd["config"] = asdict(learner.config)  # options a state predates take their defaults, as the constructor did
    if sd["optimizer"]["param_groups"] is None:  # format 1: plain SGD over the head, hyperparameters from the config
        sd["optimizer"]["param_groups"] = learner.optimizer.state_dict()["param_groups"]
    sd["head"] = head.state_dict()
    learner.load_state_dict(sd, where=where)
    return learner
