"""A suite's resume records (``OUT/records/METHOD-seedN.json``), read like every other lightcl file.

A restarted suite reuses a finished run's record instead of running it again, so a record is input: it is
read only if it is a regular file inside ``OUT`` (no component below ``OUT`` a link: a symlink to a forged
record elsewhere used to be reused in results.json), opened non-blocking (a FIFO used to hang the suite),
bounded in size and nesting, and its content checked against what the report and the plots read (a
right-keyed record with malformed or deeply nested values used to end in a traceback). A record that fails
any of this is not trusted: the run is done again, and :func:`load_finished` says why in one line.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any, Callable, Optional

from lightcl.engine.errors import LightCLError
from lightcl.engine.fileio import loads_json, open_regular

RECORDS_DIR = "records"
MAX_RECORD_BYTES = 16 << 20  # a record holds a few matrices of accuracies: kilobytes
MAX_RECORD_DEPTH = 16  # the deepest thing a record holds is hyperparameters / the theoretical accounting
MAX_TASKS = 10_000

# the figures the report, the CSV and the plots read from an ok record (bench/aggregate.py, bench/report.py)
NUMBERS = ("final_til", "forgetting_til", "bwt_til", "theoretical_mib", "peak_rss_delta_mib",
           "peak_rss_total_delta_mib", "train_flops", "step_ms", "wall_s", "train_s")
OPTIONAL_NUMBERS = ("final_cil", "forgetting_cil", "bwt_cil", "step_ms_p90", "idle_rss_mib", "peak_rss_mib",
                    "cuda_max_allocated_mib", "step_ms_mean")


# the paper's accounting the report's memory table prints (bench/report.py: _theory_row)
THEORY_KEYS = ("weights", "trainable", "optimizer_slots", "extra_state", "activations", "samples_per_step", "buffer")


class BadRecord(ValueError):
    """Why a record is not trusted (one line)."""


def record_path(out: str | Path, method: str, seed: int) -> Path:
    return Path(out) / RECORDS_DIR / f"{method}-seed{seed}.json"


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _matrix(v: Any, key: str) -> None:
    if not isinstance(v, list) or not 0 < len(v) <= MAX_TASKS:
        raise BadRecord(f"{key} must be a non-empty accuracy matrix")
    for t, row in enumerate(v):
        if not isinstance(row, list) or not row or not all(_number(a) and 0 <= a <= 1 for a in row):
            raise BadRecord(f"{key} row {t} must be accuracies in [0, 1]")
        if len(row) > len(v):
            raise BadRecord(f"{key} row {t} has more tasks than the matrix has rows")


def check_record(rec: Any, spec: dict, key: str) -> dict:
    """An ok record of exactly this run (``key``: its run key), shaped as the report reads it."""
    if not isinstance(rec, dict):
        raise BadRecord("not a JSON object")
    if rec.get("status") != "ok":
        raise BadRecord(f"status {str(rec.get('status'))[:20]!r}")  # a failed run is run again, said as such
    if rec.get("run_key") != key:
        raise BadRecord("made by another run spec (run_key differs)")
    if rec.get("method") != spec["method"] or isinstance(rec.get("seed"), bool) or rec.get("seed") != spec["seed"]:
        raise BadRecord("method or seed differ from its file name")
    for k in NUMBERS:
        if not _number(rec.get(k)):
            raise BadRecord(f"{k} must be a finite number")
    for k in OPTIONAL_NUMBERS:
        if rec.get(k) is not None and not _number(rec[k]):
            raise BadRecord(f"{k} must be a finite number or null")
    if isinstance(rec.get("steps"), bool) or not isinstance(rec.get("steps"), int) or rec["steps"] < 0:
        raise BadRecord("steps must be a non-negative integer")
    _matrix(rec.get("til"), "til")
    if rec.get("cil") is not None:
        _matrix(rec["cil"], "cil")
        if len(rec["cil"]) != len(rec["til"]) or rec.get("final_cil") is None:
            raise BadRecord("cil and til must have one row per task each, and final_cil a number")
    for k in ("theoretical", "hyperparameters", "describe", "config"):
        if k in rec and not isinstance(rec[k], dict):
            raise BadRecord(f"{k} must be an object")
    theory = rec.get("theoretical")
    if not isinstance(theory, dict) or not all(_number(theory.get(k)) for k in THEORY_KEYS):
        raise BadRecord(f"theoretical must hold the numbers {', '.join(THEORY_KEYS)}")
    return rec


def _inside(out: Path, path: Path) -> None:
    """Every component from ``out`` down to the record: a real directory, then a regular file; no link."""
    q = out
    parts = path.relative_to(out).parts
    for i, part in enumerate(parts):
        q = q / part
        try:
            mode = os.lstat(q).st_mode
        except FileNotFoundError:
            raise
        except OSError as e:
            raise BadRecord(f"cannot be reached ({e.strerror or e})") from None
        last = i == len(parts) - 1
        if stat.S_ISLNK(mode):
            raise BadRecord(f"{q} is a symbolic link; a record is read only from inside {out}")
        if not last and not stat.S_ISDIR(mode):
            raise BadRecord(f"{q} is not a directory")
        if last and not stat.S_ISREG(mode):
            raise BadRecord("not a regular file")


def read_record(out: str | Path, spec: dict, key: str) -> dict:
    """The record of this run, or :class:`BadRecord` (FileNotFoundError when there is none)."""
    out = Path(out)
    path = record_path(out, spec["method"], spec["seed"])
    _inside(out, path)
    try:
        with open_regular(path, "suite record", max_bytes=MAX_RECORD_BYTES) as f:
            data = f.read(MAX_RECORD_BYTES + 1)
    except LightCLError as e:
        raise BadRecord(str(e)) from None
    if len(data) > MAX_RECORD_BYTES:
        raise BadRecord(f"more than {MAX_RECORD_BYTES} bytes")
    try:
        rec = loads_json(data, "record")
    except LightCLError as e:
        raise BadRecord(str(e)) from None
    from lightcl.engine.fileio import json_depth

    if json_depth(rec, MAX_RECORD_DEPTH) > MAX_RECORD_DEPTH:
        raise BadRecord(f"nested deeper than {MAX_RECORD_DEPTH} levels")
    return check_record(rec, spec, key)


def load_finished(out: str | Path, spec: dict, key: str,
                  echo: Optional[Callable[[str], None]] = None) -> Optional[dict]:
    """The finished record of this exact run, or None: absent, failed, another spec, or not trusted (then
    ``echo`` gets one line saying why, and the run is done again)."""
    try:
        return read_record(out, spec, key)
    except FileNotFoundError:
        return None
    except BadRecord as e:
        if echo is not None and not str(e).startswith("status "):  # a failed run is simply run again
            where = record_path(out, spec["method"], spec["seed"])
            echo(f"suite: {where}: not trusted ({' '.join(str(e).split())[:300]}); running "
                 f"{spec['method']} seed {spec['seed']} again")
        return None
