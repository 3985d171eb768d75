"""Transactional ``load_state_dict`` (issue 21, item 3): what ``save()`` writes always loads, and a state that
breaks an invariant is refused before anything changes.

Properties (hypothesis): random valid learners (options, tasks, steps, open or closed last task, counters
near their bound, random JSON ``extra``, evaluations) round-trip through save/load and through a second
save/load after more training; random corruptions of a valid state dict (a current task that is also
finished, counters out of range, metrics of another shape, non-JSON or too deep ``extra``, an invalid RNG
state of the right size, protocol fields without an open task, ...) are refused with one IntegrityError and
leave the learner exactly as it was. Uses the tiny pooling extractor of tests/data/make_state_v1.py (no
export needed: each example takes milliseconds).
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile_util import count, report_hostile_counts  # noqa: F401
from lightcl.engine.errors import InputError, IntegrityError
from lightcl.engine.head import Head
from lightcl.engine.learner import LightCL
from lightcl.engine.state_check import COUNTER_MAX
from test_state_dict import V1

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def _learner(**options) -> LightCL:
    torch.manual_seed(0)
    return LightCL(V1.PoolExtractor(), Head(V1.HEAD_CONFIG), **{**V1.OPTIONS, **options})


def _plain(v):
    """A comparable image of a state dict: tensors as (dtype, shape, bytes)."""
    if isinstance(v, torch.Tensor):
        return ("T", str(v.dtype), tuple(v.shape), v.detach().cpu().contiguous().numpy().tobytes())
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def snapshot(lr: LightCL) -> dict:
    return _plain(copy.deepcopy(lr.state_dict()))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 60, 2 ** 60) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12)


@st.composite
def histories(draw):
    return {
        "options": {"momentum": draw(st.sampled_from([0.0, 0.9])),
                    "buffer_size": draw(st.integers(0, 6)),
                    "buffer_policy": draw(st.sampled_from(["new-task-first-batch", "reservoir"])),
                    "num_classes": draw(st.sampled_from([None, 8]))},
        "tasks": draw(st.integers(1, 3)),
        "steps": draw(st.integers(0, 3)),
        "close_last": draw(st.booleans()),
        "evaluate": draw(st.booleans()),
        "counter": draw(st.sampled_from([None, 0, COUNTER_MAX - 1, COUNTER_MAX])),
        "extra": draw(st.dictionaries(st.text(max_size=6), json_values, max_size=4)),
    }


def _run(h: dict) -> LightCL:
    lr = _learner(**h["options"])
    for t in range(h["tasks"]):
        classes = [2 * t, 2 * t + 1]
        lr.begin_task(t, classes)
        for i, (x, y) in enumerate(V1.batches(10 * t + 1, classes, h["steps"])):
            lr.observe(x, y)
        if t < h["tasks"] - 1 or h["close_last"]:
            lr.end_task(V1.batches(10 * t + 2, classes, 1)[0][0])
            if h["evaluate"]:
                lr.evaluate([(s, V1.batches(10 * s + 3, [2 * s, 2 * s + 1], 1)) for s in range(t + 1)])
    if h["counter"] is not None:
        lr.counters["steps"] = h["counter"]
    lr.extra.update(h["extra"])
    return lr


@SETTINGS
@given(histories())
def test_what_save_writes_always_loads(tmp_path_factory, h):
    lr = _run(h)
    d = tmp_path_factory.mktemp("rt")
    lr.save(d / "s")
    back = LightCL.load(d / "s", V1.PoolExtractor())
    assert snapshot(back) == snapshot(lr)
    # the next save of the loaded learner (after more work, counters at their bound included) loads too
    if back.current_task is not None and h["steps"]:
        classes = back.tasks[back.current_task]
        for x, y in V1.batches(99, classes, 2):
            back.observe(x, y)
        assert back.counters["steps"] <= COUNTER_MAX
    back.save(d / "s")
    again = LightCL.load(d / "s", V1.PoolExtractor())
    assert snapshot(again) == snapshot(back)
    count("state", "round trips of random valid learners")


def _base() -> tuple[LightCL, dict]:
    h = {"options": {"momentum": 0.9, "num_classes": 8}, "tasks": 2, "steps": 2, "close_last": False,
         "evaluate": True, "counter": None, "extra": {"k": [1, 2]}}
    lr = _run(h)
    return lr, lr.state_dict()


def _bad_rng(sd, draw):
    # right size and dtype, random content: torch refuses it ("Invalid mt19937 state") only in set_state
    sd["rng"] = torch.randint(0, 256, sd["rng"].shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(draw))


def _deep(n):
    v: object = 0
    for _ in range(n):
        v = [v]
    return v


CORRUPTIONS = {
    "current task also finished": lambda sd, d: sd.update(finished_tasks=[0, 1]),
    "counter 2**63-1": lambda sd, d: sd["counters"].update(steps=2 ** 63 - 1),
    "counter past the bound": lambda sd, d: sd["counters"].update(steps=COUNTER_MAX + 1 + d),
    "counter negative": lambda sd, d: sd["counters"].update(steps=-1 - d),
    "counter float": lambda sd, d: sd["counters"].update(steps=1.5),
    "counter bool": lambda sd, d: sd["counters"].update(steps=True),
    "counter name not a string": lambda sd, d: sd["counters"].update({7: 1}),
    "metrics empty": lambda sd, d: sd.update(metrics={}),
    "metrics extra key": lambda sd, d: sd["metrics"].update(x=[]),
    "metrics ragged": lambda sd, d: sd["metrics"]["til"].append([0.5]),
    "metrics accuracy > 1": lambda sd, d: sd["metrics"]["til"][0].__setitem__(0, 1.0 + d + 0.5),
    "metrics NaN": lambda sd, d: sd["metrics"]["cil"][0].__setitem__(0, math.nan),
    "metrics unknown task": lambda sd, d: sd["metrics"]["tasks"][0].__setitem__(0, 99 + d),
    "metrics row of another length": lambda sd, d: sd["metrics"]["tasks"][0].append(0),
    "metrics not a list": lambda sd, d: sd["metrics"].update(til="abc"),
    "extra not JSON": lambda sd, d: sd["extra"].update(x={1, 2}),
    "extra nested too deep": lambda sd, d: sd["extra"].update(x=_deep(70 + d)),
    "rng invalid, right size": _bad_rng,
    "pending capture without a task": lambda sd, d: sd.update(current_task=None, pending_capture=True,
                                                              last_features=None),
    "last features without a task": lambda sd, d: sd.update(current_task=None, pending_capture=False),
    "finished twice": lambda sd, d: sd.update(finished_tasks=[0, 0]),
    "current task unknown": lambda sd, d: sd.update(current_task=5 + d),
}


@SETTINGS
@given(st.sampled_from(sorted(CORRUPTIONS)), st.integers(0, 1000))
def test_a_corrupted_state_is_refused_and_changes_nothing(name, draw):
    src, sd = _base()
    target = _run({"options": {"momentum": 0.9, "num_classes": 8}, "tasks": 1, "steps": 1, "close_last": True,
                   "evaluate": True, "counter": None, "extra": {"mine": True}})
    before = snapshot(target)
    bad = copy.deepcopy(sd)
    CORRUPTIONS[name](bad, draw)
    with pytest.raises((IntegrityError, InputError)):
        target.load_state_dict(bad)
    assert snapshot(target) == before, name
    # and the uncorrupted one loads (the corruption alone was refused)
    target.load_state_dict(copy.deepcopy(sd))
    assert snapshot(target) == snapshot(src)
    count("state", "corrupted state dicts refused with no change")


def test_loaded_json_values_are_not_aliased():
    src, sd = _base()
    lr = _learner(momentum=0.9, num_classes=8)
    lr.load_state_dict(sd)
    sd["metrics"]["til"].append([0.0])
    sd["extra"]["k"].append(3)
    assert lr.metrics["til"] != sd["metrics"]["til"] and lr.extra["k"] == [1, 2]
    lr.evaluate([(0, V1.batches(3, [0, 1], 1))])  # a loaded learner evaluates (metrics {} used to KeyError)


RUNNER_EDITS = {
    "metrics ragged": lambda doc: doc["metrics"]["til"].append([0.5, 0.5, 0.5]),
    "metrics rows of another shape": lambda doc: doc["metrics"].update(til=[[0.5, 0.5]], cil=[[0.5, 0.5]],
                                                                       tasks=[[0, 0]]),
    "metrics not an object": lambda doc: doc.update(metrics=[1, 2]),
    "extra.scenario a string": lambda doc: doc["extra"].update(scenario="smoke"),
    "extra.scenario without a name": lambda doc: doc["extra"].update(scenario={"n_tasks": 5}),
    "extra.scenario name a list": lambda doc: doc["extra"].update(scenario={"name": ["smoke"]}),
    "wall_s a string": lambda doc: doc["extra"].update(wall_s="1.0"),
    "wall_s NaN-like": lambda doc: doc["extra"].update(wall_s=-1.0),
    "wall_s a list": lambda doc: doc["extra"].update(wall_s=[1.0]),
    "step_ms a number": lambda doc: doc["extra"].update(step_ms=3.0),
    "step_ms strings": lambda doc: doc["extra"].update(step_ms=["3"]),
    "step_ms too many": lambda doc: doc["extra"].update(step_ms=[1.0, 2.0, 3.0]),
    "step_ms negative": lambda doc: doc["extra"].update(step_ms=[-1.0]),
}


def test_runner_fields_of_a_resigned_state_are_one_line(digits_export, tmp_path):
    """`lightcl learn --resume` on a state.json whose runner fields (metrics, extra.scenario, wall_s, step_ms)
    were edited and re-signed: one line, non-zero exit, the state unchanged (they used to be tracebacks)."""
    import shutil

    from hostile_util import cli, resign_state, tree_bytes

    good = tmp_path / "good"
    rc, _, err = cli(["learn", digits_export, "--scenario", "smoke", "--state", good, "--backend", "torch",
                      "--epochs", "1", "--max-tasks", "1", "--quiet"])
    assert rc == 0, err
    for i, (name, edit) in enumerate(RUNNER_EDITS.items()):
        d = tmp_path / f"s{i}"
        shutil.copytree(good, d)
        resign_state(d, edit_doc=edit)
        before = tree_bytes(d)
        rc, _, err = cli(["learn", digits_export, "--scenario", "smoke", "--state", d, "--backend", "torch",
                          "--epochs", "1", "--max-tasks", "1", "--resume", "--quiet"])
        assert rc not in (0, None), (name, err)
        assert tree_bytes(d) == before, name
        count("tracebacks", "re-signed runner fields of a state (learn --resume)")
