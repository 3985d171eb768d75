"""A learner's state is one directory, written atomically:

- ``head.safetensors``   the head's weights (config in its metadata)
- ``learner.safetensors`` buffer features and targets, vital-channel masks, optimizer state, RNG
- ``state.json``          options, task/class map, progress, metrics, frozen_id, sha256 of each file

No pickle anywhere: safetensors + JSON. ``load`` verifies every checksum and refuses a state that
was trained against another frozen part.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from .errors import IntegrityError, StateError
from .fileio import atomic_directory, read_json, recover_directory, sha256_file, verify_files
from .head import Head

STATE_FORMAT = "lightcl-state/1"
FILES = ("head.safetensors", "learner.safetensors")


def save_state(learner, directory: str | Path) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
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
        if learner._last_features is not None:
            tensors["task.last_features"] = learner._last_features.detach().cpu().contiguous()
        save_file(tensors, str(tmp / "learner.safetensors"))
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
            "files": {name: sha256_file(tmp / name) for name in FILES},
        }
        (tmp / "state.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return directory


def read_state_doc(directory: str | Path) -> dict:
    directory = Path(directory)
    recover_directory(directory)
    if not directory.is_dir():
        raise StateError(f"no learner state at {directory}")
    doc = read_json(directory / "state.json", "learner state")
    if doc.get("format") != STATE_FORMAT:
        raise IntegrityError(f"{directory}/state.json is not a lightcl learner state (format {doc.get('format')!r})")
    files = doc.get("files")
    if not isinstance(files, dict) or set(files) != set(FILES):
        raise IntegrityError(f"{directory}/state.json: file list must be exactly {list(FILES)}")
    verify_files(directory, files, "learner state")
    return doc


def load_state(cls, directory: str | Path, extractor, device: str | None = None):
    from safetensors.torch import load_file

    directory = Path(directory)
    doc = read_state_doc(directory)
    want = doc.get("frozen_id")
    have = getattr(extractor, "frozen_id", None)
    if want and have and want != have:
        raise IntegrityError(
            f"state {directory} was trained against frozen part {want[:12]}..., but this extractor runs "
            f"{have[:12]}...: load it with the export it was learned on")
    head = Head.load(directory / "head.safetensors")
    try:
        tensors = load_file(str(directory / "learner.safetensors"))
    except Exception as e:
        raise IntegrityError(f"{directory}/learner.safetensors is unreadable ({e})") from None
    config = dict(doc["config"])
    if device is not None:
        config["device"] = device
    reset = config.pop("reset_classifier", True)
    learner = cls(extractor, head, reset_classifier=False, **config)
    learner.config.reset_classifier = reset
    learner.tasks = {int(t): [int(c) for c in cs] for t, cs in doc["tasks"]}
    learner.class_index = {int(c): int(i) for c, i in doc["class_index"]}
    learner.current_task = doc["current_task"]
    learner._pending_capture = bool(doc.get("pending_capture", False))
    learner.finished_tasks = [int(t) for t in doc["finished_tasks"]]
    learner.counters.update(doc.get("counters", {}))
    learner.metrics = doc.get("metrics", learner.metrics)
    learner.extra = doc.get("extra", {})
    learner.memory.load_tensors({k: v.to(learner.device) for k, v in tensors.items()
                                 if k.split(".")[0] in ("buffer", "target", "mask")})
    learner.memory.seen = int(doc.get("memory_seen", 0))
    if "rng.generator" in tensors:
        learner.generator.set_state(tensors["rng.generator"])
    if "task.last_features" in tensors:
        learner._last_features = tensors["task.last_features"].to(learner.device)
    params = list(learner.head.parameters())
    for i, p in enumerate(params):
        key = f"optim.{i}.momentum_buffer"
        if key in tensors:
            learner.optimizer.state[p]["momentum_buffer"] = tensors[key].to(learner.device)
    return learner
