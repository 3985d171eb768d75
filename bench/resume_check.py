"""What ``lightcl learn --resume`` reads back from a state it wrote: the runner's own fields, checked before
any work (a re-signed ``state.json`` with a string ``wall_s`` or ragged metrics used to end in a traceback).

``LightCL.load_state_dict`` already checked every field's type and the metrics' shape against the tasks;
here: the fields only the runner writes (``extra.scenario``, ``extra.step_ms``, ``extra.wall_s``) and the
shape the runner gives the accuracy matrices (one row per finished task, row ``t`` covering tasks ``0..t``).
Every failure is one :class:`StateError` line.
"""
from __future__ import annotations

import math
from typing import Any

from lightcl.engine.errors import StateError


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


def check_resume(learner, scenario, where: str) -> None:
    """Refuse a state whose runner fields ``learn_scenario`` cannot continue from."""
    extra = learner.extra
    saved = extra.get("scenario")
    if not isinstance(saved, dict) or not isinstance(saved.get("name"), str):
        raise StateError(f"state {where}: extra.scenario must be the scenario it was learned on (an object with "
                         "a name); it is not a state `lightcl learn` wrote")
    if saved["name"] != scenario.name:
        raise StateError(f"state {where} belongs to scenario {saved['name'][:80]!r}, not {scenario.name!r}")
    done = len(learner.finished_tasks)
    if done > scenario.n_tasks:
        raise StateError(f"state {where} has {done} finished tasks; scenario {scenario.name} has {scenario.n_tasks}")
    if learner.current_task is not None:
        raise StateError(f"state {where} has task {learner.current_task} open: `lightcl learn` saves between tasks only")
    step_ms, wall_s = extra.get("step_ms", []), extra.get("wall_s", 0.0)
    if not isinstance(step_ms, list) or len(step_ms) != done or not all(_number(v) for v in step_ms):
        raise StateError(f"state {where}: extra.step_ms must be one non-negative number per finished task ({done})")
    if not _number(wall_s):
        raise StateError(f"state {where}: extra.wall_s must be a non-negative number of seconds")
    for key in ("til", "cil"):
        rows = learner.metrics[key]
        if len(rows) != done or any(len(r) != t + 1 for t, r in enumerate(rows)):
            raise StateError(f"state {where}: metrics.{key} must hold one row per finished task, row t covering "
                             f"tasks 0..t ({done} tasks finished)")
