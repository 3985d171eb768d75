"""Whole-state checks of a learner state dict that ``LightCL.load_state_dict`` runs before it changes anything.

Field types are checked where the fields are read (``engine/learner_state.py``); this module holds what spans
fields and what must hold for the *next* ``save()`` to load again:

* the task protocol: the open task is not also finished; with no open task there is no pending buffer
  capture and no last batch of features;
* counters: string names, integers in ``[0, COUNTER_MAX]``; the learner's own increments saturate there
  (:func:`bump`), so a counter loaded at the bound never becomes one that load refuses;
* metrics: exactly ``til``/``cil``/``tasks``, rows of one length each, accuracies finite in [0, 1],
  task ids known (``evaluate`` appends to all three and ``lightcl learn`` reads them);
* extra: JSON that save can write and load can read back (types, nesting depth);
* the RNG state: tried on a scratch generator first (an invalid state of the right size used to raise
  ``RuntimeError`` after the learner was already half-changed).

Every failure is one :class:`IntegrityError` line naming ``where``. Python 3.8-compatible (device side).
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

import torch

from .errors import IntegrityError
from .fileio import MAX_JSON_DEPTH, json_depth

COUNTER_MAX = (1 << 53) - 1  # exact in a JSON double too; a step per microsecond takes 285 years to get here
MAX_COUNTER_NAME = 64
METRIC_KEYS = ("til", "cil", "tasks")


def bump(counters: dict, key: str, n: int = 1) -> None:
    """``counters[key] += n``, saturating at :data:`COUNTER_MAX`: what a save writes always loads."""
    counters[key] = min(COUNTER_MAX, int(counters.get(key, 0)) + n)


def check_rng(rng: Any, where: str) -> torch.Tensor:
    """A generator state that ``torch.Generator.set_state`` accepts, tried on a scratch generator."""
    ref = torch.Generator().get_state()
    if not isinstance(rng, torch.Tensor) or rng.dtype != ref.dtype or rng.shape != ref.shape:
        raise IntegrityError(f"{where}: rng is not a generator state")
    try:
        torch.Generator().set_state(rng.detach().cpu().clone())
    except (RuntimeError, ValueError, TypeError) as e:
        raise IntegrityError(f"{where}: rng is not a valid generator state ({str(e).splitlines()[0][:120]})") from None
    return rng


def check_counters(counters: Any, where: str) -> dict:
    if not isinstance(counters, Mapping):
        raise IntegrityError(f"{where}: counters must map names to non-negative integers")
    out = {}
    for k, v in counters.items():
        if not isinstance(k, str) or not 0 < len(k) <= MAX_COUNTER_NAME:
            raise IntegrityError(f"{where}: counter names must be short strings, got {str(k)[:40]!r}")
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= COUNTER_MAX:
            raise IntegrityError(f"{where}: counter {k!r} must be an integer in [0, {COUNTER_MAX}], got {str(v)[:40]}")
        out[k] = v
    return out


def check_metrics(metrics: Any, tasks: Mapping[int, Any], where: str) -> dict:
    """The accuracy matrices: returned as a fresh copy (the caller's object is never aliased)."""
    if not isinstance(metrics, Mapping) or set(metrics) != set(METRIC_KEYS):
        raise IntegrityError(f"{where}: metrics must be an object of exactly {list(METRIC_KEYS)}")
    rows = {k: metrics[k] for k in METRIC_KEYS}
    if not all(isinstance(v, list) for v in rows.values()) or len({len(v) for v in rows.values()}) != 1:
        raise IntegrityError(f"{where}: metrics til, cil and tasks must be lists of one length (one row per evaluation)")
    out: dict = {k: [] for k in METRIC_KEYS}
    for i, (til, cil, ids) in enumerate(zip(rows["til"], rows["cil"], rows["tasks"])):
        if not all(isinstance(r, list) for r in (til, cil, ids)) or not len(til) == len(cil) == len(ids):
            raise IntegrityError(f"{where}: metrics row {i}: til, cil and tasks must be lists of one length")
        for a in til + cil:
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not (math.isfinite(a) and 0 <= a <= 1):
                raise IntegrityError(f"{where}: metrics row {i}: accuracies must be numbers in [0, 1], got {str(a)[:40]}")
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or t not in tasks:
                raise IntegrityError(f"{where}: metrics row {i}: {str(t)[:40]} is not a known task")
        out["til"].append([float(a) for a in til])
        out["cil"].append([float(a) for a in cil])
        out["tasks"].append(list(ids))
    return out


def check_extra(extra: Any, where: str) -> dict:
    """``extra`` as save will write it: a JSON object, nested at most ``MAX_JSON_DEPTH``; returned as a copy."""
    if not isinstance(extra, dict):
        raise IntegrityError(f"{where}: extra must be a JSON object")
    if json_depth(extra) > MAX_JSON_DEPTH:
        raise IntegrityError(f"{where}: extra is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(json.dumps(extra))
    except (TypeError, ValueError, RecursionError) as e:
        raise IntegrityError(f"{where}: extra must hold JSON values only ({str(e)[:120]})") from None


def check_protocol(state: Mapping[str, Any], where: str) -> None:
    """Invariants between the task fields (their types were checked by ``learner_state.check_tasks``)."""
    cur = state["current_task"]
    if cur is not None and cur in state["finished_tasks"]:
        raise IntegrityError(f"{where}: current_task {cur} is also a finished task")
    if cur is None and state["pending_capture"]:
        raise IntegrityError(f"{where}: pending_capture without an open task")
    if cur is None and state["last_features"] is not None:
        raise IntegrityError(f"{where}: last_features without an open task")


def check_whole(state: Mapping[str, Any], tasks: Mapping[int, Any], where: str) -> dict:
    """Every cross-field check; returns the copied JSON values to install (counters, metrics, extra)."""
    check_protocol(state, where)
    check_rng(state["rng"], where)
    return {"counters": check_counters(state["counters"], where),
            "metrics": check_metrics(state["metrics"], tasks, where),
            "extra": check_extra(state["extra"], where)}
