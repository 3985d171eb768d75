"""Bad input at every public entry: a typed LightCLError, one line from the CLI, and no state change.

Python API (real onnxruntime and torch extractors of the digits export, real digits images):
LightCL (constructor, begin_task, observe, end_task, predict, logits, evaluate, save, load),
Head.load, load_extractor and the extractor's ``__call__``, load_dataset, export_checkpoint.
CLI (in-process ``lightcl.cli.main`` for breadth, plus real subprocesses for the end-to-end line):
learn, predict, export, bench latency, bench update, pretrain, analyze.

For every learner case the whole learner (head weights and BN buffers, memory tensors, optimizer
state, counters, task map, RNG, last features, ...) is compared before/after; CLI cases that point
at a valid state compare its files byte for byte. Cases are counted by kind (``-s`` prints the table;
``LIGHTCL_RELIABILITY_DIR=DIR`` writes it as JSON).
"""
from __future__ import annotations

import collections
import contextlib
import copy
import hashlib
import io
import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from lightcl.engine.errors import (InputError, IntegrityError, LightCLError, MissingDependencyError, NonFiniteError,
                                   ShapeError, StateError, UnknownClassError, UnknownTaskError)
from lightcl.engine.export_dir import load_export_meta, load_head
from lightcl.engine.extractors import load_extractor
from lightcl.engine.head import Head
from lightcl.engine.learner import LightCL
from lightcl.engine.losses import LossComponent
from conftest import write_counts

COUNTS: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts("inputs", COUNTS)
    if COUNTS:
        width = max(len(k) for k in COUNTS)
        print("\nbad inputs tried, by kind:")
        for k, n in sorted(COUNTS.items()):
            print(f"  {k:<{width}}  {n}")


def count(kind: str, surface: str) -> None:
    COUNTS[f"{surface}: {kind}"] += 1


# ---------------------------------------------------------------- fixtures: real export, real images
@pytest.fixture(scope="module")
def env(digits_export, tmp_path_factory):
    from lightcl.data.datasets import load_dataset
    from lightcl.data.tasks import TensorData
    from lightcl.data.transforms import Preprocess

    meta = load_export_meta(digits_export)
    pre = Preprocess(meta["normalization"]["mean"], meta["normalization"]["std"])
    data = TensorData(load_dataset("digits", "test"))

    def batch(classes, n=8):
        idx = np.flatnonzero(np.isin(data.y.numpy(), classes))[:n]
        return pre(data.x[torch.as_tensor(idx)]), data.y[torch.as_tensor(idx)]

    ort = load_extractor(digits_export, backend="ort", threads=1)
    tch = load_extractor(digits_export, backend="torch")

    def learner(state: str) -> LightCL:
        lr = LightCL(ort, load_head(digits_export), num_classes=None, momentum=0.9, seed=0)
        if state == "fresh":
            return lr
        lr.begin_task(0, [0, 1])
        lr.observe(*batch([0, 1]))
        lr.end_task()
        lr.begin_task(1, [2, 3])
        lr.observe(*batch([2, 3]))  # buffer + targets + momentum
        if state == "closed":
            lr.end_task()
        return lr

    root = tmp_path_factory.mktemp("inputs")
    state = root / "state"
    lr = learner("closed")
    lr.extra.update(scenario={"name": "not-a-scenario"}, export_dir=str(digits_export))
    lr.save(state)
    return {"export": digits_export, "batch": batch, "ort": ort, "torch": tch, "open": learner("open"),
            "closed": learner("closed"), "fresh": learner("fresh"), "state": state, "root": root}


def snapshot(lr: LightCL) -> dict:
    params = list(lr.head.parameters())
    return {
        "head": {k: v.detach().clone() for k, v in lr.head.state_dict().items()},
        "training": lr.head.training,
        "memory": {k: v.clone() for k, v in lr.memory.tensors().items()},
        "memory_seen": lr.memory.seen,
        "optimizer": {i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in lr.optimizer.state[p].items()}
                      for i, p in enumerate(params) if p in lr.optimizer.state},
        "rng": lr.generator.get_state().clone(),
        "last_features": None if lr._last_features is None else lr._last_features.clone(),
        "plain": copy.deepcopy({"counters": lr.counters, "tasks": lr.tasks, "class_index": lr.class_index,
                                "current_task": lr.current_task, "finished": lr.finished_tasks,
                                "pending": lr._pending_capture, "metrics": lr.metrics, "extra": lr.extra,
                                "config": asdict(lr.config), "num_classes": lr.head.num_classes}),
    }


def assert_same(a: dict, b: dict, what: str = "") -> None:
    def eq(x, y, path):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape \
                and torch.equal(x, y), f"{what}: {path} changed"
        elif isinstance(x, dict):
            assert isinstance(y, dict) and set(x) == set(y), f"{what}: {path} keys changed"
            for k in x:
                eq(x[k], y[k], f"{path}.{k}")
        else:
            assert x == y, f"{what}: {path} changed: {x!r} -> {y!r}"

    eq(a, b, "learner")


def tree_digest(d: Path) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- learner cases: (kind, label, learner, call, error)
def _x(env, classes=(2, 3), n=8):
    return env["batch"](list(classes), n)


def _nan(x, v=float("nan")):
    x = x.clone()
    x[0, 1, 5, 5] = v
    return x


def learner_cases():
    X = lambda e: _x(e)[0]  # noqa: E731
    Y = lambda e: _x(e)[1]  # noqa: E731
    c = []

    def add(kind, label, which, fn, exc):
        c.append(pytest.param(kind, which, fn, exc, id=f"{kind}/{label}"))

    # wrong rank
    add("wrong rank", "observe 3-D", "open", lambda e, lr: lr.observe(X(e)[0], Y(e)), ShapeError)
    add("wrong rank", "observe 5-D", "open", lambda e, lr: lr.observe(X(e)[None], Y(e)), ShapeError)
    add("wrong rank", "predict 3-D", "closed", lambda e, lr: lr.predict(X(e)[0]), ShapeError)
    add("wrong rank", "logits 2-D", "closed", lambda e, lr: lr.logits(X(e).flatten(1)), ShapeError)
    add("wrong rank", "end_task 3-D", "open", lambda e, lr: lr.end_task(X(e)[0]), ShapeError)
    add("wrong rank", "predict scalar", "closed", lambda e, lr: lr.predict(torch.tensor(1.0)), ShapeError)
    # wrong channel count
    add("wrong channel count", "observe 1 channel", "open", lambda e, lr: lr.observe(X(e)[:, :1], Y(e)), ShapeError)
    add("wrong channel count", "observe 4 channels", "open",
        lambda e, lr: lr.observe(torch.cat([X(e), X(e)[:, :1]], 1), Y(e)), ShapeError)
    add("wrong channel count", "predict 1 channel", "closed", lambda e, lr: lr.predict(X(e)[:, :1]), ShapeError)
    add("wrong channel count", "end_task 2 channels", "open", lambda e, lr: lr.end_task(X(e)[:, :2]), ShapeError)
    add("wrong channel count", "channels last layout as NHWC", "closed",
        lambda e, lr: lr.predict(X(e).permute(0, 2, 3, 1)), ShapeError)
    # wrong image size
    add("wrong image size", "observe 28x28", "open", lambda e, lr: lr.observe(X(e)[..., :28, :28], Y(e)), ShapeError)
    add("wrong image size", "predict 64x64", "closed",
        lambda e, lr: lr.predict(torch.nn.functional.interpolate(X(e), size=64)), ShapeError)
    add("wrong image size", "logits 32x31", "closed", lambda e, lr: lr.logits(X(e)[..., :31]), ShapeError)
    add("wrong image size", "end_task 8x8", "open", lambda e, lr: lr.end_task(X(e)[..., :8, :8]), ShapeError)
    # wrong dtype
    for dt in (torch.uint8, torch.int64, torch.bool, torch.complex64):
        add("wrong dtype", f"observe {dt}", "open", lambda e, lr, dt=dt: lr.observe(X(e).to(dt), Y(e)), ShapeError)
    add("wrong dtype", "predict uint8", "closed", lambda e, lr: lr.predict((X(e) * 50).to(torch.uint8)), ShapeError)
    add("wrong dtype", "logits int32", "closed", lambda e, lr: lr.logits(X(e).to(torch.int32)), ShapeError)
    # not a tensor
    add("not a tensor", "observe numpy", "open", lambda e, lr: lr.observe(X(e).numpy(), Y(e)), InputError)
    add("not a tensor", "observe list", "open", lambda e, lr: lr.observe(X(e).tolist(), Y(e)), InputError)
    add("not a tensor", "predict None", "closed", lambda e, lr: lr.predict(None), InputError)
    add("not a tensor", "logits str", "closed", lambda e, lr: lr.logits("frame.png"), InputError)
    add("not a tensor", "end_task numpy", "open", lambda e, lr: lr.end_task(X(e).numpy()), InputError)
    # NaN / Inf pixels
    for v, name in ((float("nan"), "NaN"), (float("inf"), "+Inf"), (float("-inf"), "-Inf")):
        add("NaN/Inf pixels", f"observe {name}", "open", lambda e, lr, v=v: lr.observe(_nan(X(e), v), Y(e)),
            NonFiniteError)
        add("NaN/Inf pixels", f"predict {name}", "closed", lambda e, lr, v=v: lr.predict(_nan(X(e), v)), NonFiniteError)
    add("NaN/Inf pixels", "logits NaN", "closed", lambda e, lr: lr.logits(_nan(X(e))), NonFiniteError)
    add("NaN/Inf pixels", "end_task NaN", "open", lambda e, lr: lr.end_task(_nan(X(e))), NonFiniteError)
    add("NaN/Inf pixels", "observe float64 1e300 (Inf as float32)", "open",
        lambda e, lr: lr.observe(X(e).double() * 1e300, Y(e)), NonFiniteError)
    add("NaN/Inf pixels", "predict all NaN", "closed", lambda e, lr: lr.predict(torch.full((2, 3, 32, 32), float("nan"))),
        NonFiniteError)
    # finite pixels so large that the frozen part overflows
    add("extreme finite pixels", "predict 3e38", "closed", lambda e, lr: lr.predict(torch.full((2, 3, 32, 32), 3e38)),
        NonFiniteError)
    add("extreme finite pixels", "logits -3e38", "closed", lambda e, lr: lr.logits(torch.full((2, 3, 32, 32), -3e38)),
        NonFiniteError)
    add("extreme finite pixels", "end_task 3e38", "open", lambda e, lr: lr.end_task(torch.full((4, 3, 32, 32), 3e38)),
        NonFiniteError)
    # finite pixels whose features are finite but overflow the head's train-mode BN statistics (running_var)
    add("extreme finite pixels", "end_task x 1e30", "open", lambda e, lr: lr.end_task(X(e) * 1e30), NonFiniteError)
    add("extreme finite pixels", "begin_task buffer batch x 1e30", "closed",
        lambda e, lr: lr.begin_task(5, [8, 9], X(e) * 1e30, torch.full((8,), 8)), NonFiniteError)
    # empty batches
    add("empty batch", "observe", "open", lambda e, lr: lr.observe(X(e)[:0], Y(e)[:0]), InputError)
    add("empty batch", "predict", "closed", lambda e, lr: lr.predict(X(e)[:0]), InputError)
    add("empty batch", "logits", "closed", lambda e, lr: lr.logits(X(e)[:0]), InputError)
    add("empty batch", "end_task", "open", lambda e, lr: lr.end_task(X(e)[:0]), InputError)
    add("empty batch", "evaluate batch", "closed", lambda e, lr: lr.evaluate([(1, [(X(e)[:0], Y(e)[:0])])]), InputError)
    # labels outside the current task's classes
    for lab in (0, 1, 4, 99, -1, 2 ** 40):
        add("labels outside the task's classes", f"observe {lab}", "open",
            lambda e, lr, lab=lab: lr.observe(X(e), torch.full((8,), lab)), UnknownClassError)
    add("labels outside the task's classes", "observe one bad among good", "open",
        lambda e, lr: lr.observe(X(e), torch.tensor([2, 3, 2, 3, 2, 3, 2, 7])), UnknownClassError)
    add("labels outside the task's classes", "evaluate task 1 with task 0 labels", "closed",
        lambda e, lr: lr.evaluate([(1, [(X(e), torch.zeros(8, dtype=torch.long))])], record=True), UnknownClassError)
    # malformed labels
    add("malformed labels", "float labels", "open", lambda e, lr: lr.observe(X(e), Y(e).float()), ShapeError)
    add("malformed labels", "bool labels", "open", lambda e, lr: lr.observe(X(e), Y(e) > 2), ShapeError)
    add("malformed labels", "2-D labels", "open", lambda e, lr: lr.observe(X(e), Y(e)[:, None]), ShapeError)
    add("malformed labels", "too few labels", "open", lambda e, lr: lr.observe(X(e), Y(e)[:5]), ShapeError)
    add("malformed labels", "scalar label", "open", lambda e, lr: lr.observe(X(e), 2), ShapeError)
    add("malformed labels", "string labels", "open", lambda e, lr: lr.observe(X(e), ["two"] * 8), InputError)
    add("malformed labels", "None labels", "open", lambda e, lr: lr.observe(X(e), None), InputError)
    add("malformed labels", "evaluate wrong label count", "closed",
        lambda e, lr: lr.evaluate([(1, [(X(e), Y(e)[:3])])]), ShapeError)
    # unknown task ids
    for tid in (7, -1, "1", 2.5, None):
        add("unknown task id", f"predict til {tid!r}", "closed",
            lambda e, lr, tid=tid: lr.predict(X(e), mode="til", task_id=tid), InputError)
    add("unknown task id", "evaluate task 9", "closed", lambda e, lr: lr.evaluate([(9, [(X(e), Y(e))])]),
        UnknownTaskError)
    add("unknown task id", "task_indices 42", "closed", lambda e, lr: lr.task_indices(42), UnknownTaskError)
    # bad task / class specifications
    for tid, classes, label in ((-1, [4, 5], "negative id"), (1.5, [4, 5], "float id"), ("2", [4, 5], "str id"),
                                (True, [4, 5], "bool id"), (5, [], "no classes"), (5, [4, 4], "repeated class"),
                                (5, [0.5], "fractional class"), (5, "45", "classes as a string"),
                                (5, None, "classes None"), (5, [-3], "negative class"), (5, [2 ** 64], "class > int64"),
                                (5, [0, 1.5], "a fractional class beside a learned one"),
                                (0, [0, 1], "task already learned"),
                                (1, [2, 3], "task already learned (1)")):
        add("bad task/class spec", label, "closed", lambda e, lr, t=tid, cs=classes: lr.begin_task(t, cs), InputError)
    add("bad task/class spec", "begin while a task is open", "open", lambda e, lr: lr.begin_task(5, [8, 9]), InputError)
    # protocol misuse
    add("protocol misuse", "observe with no open task", "closed", lambda e, lr: lr.observe(X(e), Y(e)), InputError)
    add("protocol misuse", "end_task with no open task", "closed", lambda e, lr: lr.end_task(), InputError)
    add("protocol misuse", "predict before any class", "fresh", lambda e, lr: lr.predict(X(e)), InputError)
    add("protocol misuse", "predict mode 'xyz'", "closed", lambda e, lr: lr.predict(X(e), mode="xyz"), InputError)
    # malformed evaluate streams
    add("malformed evaluate stream", "None", "closed", lambda e, lr: lr.evaluate(None), InputError)
    add("malformed evaluate stream", "batches None", "closed", lambda e, lr: lr.evaluate([(1, None)]), InputError)
    add("malformed evaluate stream", "batch not a pair", "closed", lambda e, lr: lr.evaluate([(1, [(X(e),)])]),
        InputError)
    add("malformed evaluate stream", "item not a pair", "closed", lambda e, lr: lr.evaluate([1, 2]), InputError)
    return c


@pytest.mark.parametrize("kind,which,call,exc", learner_cases())
def test_learner_bad_input_is_typed_and_changes_nothing(env, kind, which, call, exc):
    lr = env[which]
    before = snapshot(lr)
    with pytest.raises(exc) as e:
        call(env, lr)
    assert isinstance(e.value, LightCLError) and str(e.value)
    assert "\n" not in str(e.value)  # prints as one line
    assert_same(before, snapshot(lr), kind)
    count(kind, "python")


def test_extreme_pixels_in_observe_skip_the_step_and_keep_the_state(env):
    """Finite pixels that overflow the frozen part: the step is skipped and counted; the buffer capture of a
    new task waits for the next good batch (a garbage first frame used to poison buffer and BN for good)."""
    lr = LightCL(env["ort"], load_head(env["export"]), num_classes=None, momentum=0.9)
    lr.begin_task(0, [0, 1])
    lr.observe(*_x(env, (0, 1)))
    lr.end_task()
    lr.begin_task(1, [2, 3])
    assert lr._pending_capture
    for big in (3e38, -3e38):
        before = snapshot(lr)
        out = lr.observe(torch.full((8, 3, 32, 32), big), _x(env)[1])
        assert out["skipped"] == 1
        after = snapshot(lr)
        assert after["plain"]["counters"]["skipped_nonfinite"] == before["plain"]["counters"]["skipped_nonfinite"] + 1
        after["plain"]["counters"] = before["plain"]["counters"]
        assert_same(before, after, "extreme pixels")
        count("extreme finite pixels", "python")
    out = lr.observe(*_x(env))  # the next good batch is captured into the buffer
    assert out["skipped"] == 0 and not lr._pending_capture and len(lr.memory) == 8
    assert all(bool(torch.isfinite(b).all()) for b in lr.head.buffers())
    assert bool(torch.isfinite(lr.memory.features).all())


def _trained(env, **opts) -> LightCL:
    lr = LightCL(env["ort"], load_head(env["export"]), num_classes=None, momentum=0.9, seed=0, **opts)
    lr.begin_task(0, [0, 1])
    lr.observe(*_x(env, (0, 1)))
    lr.end_task()
    lr.begin_task(1, [2, 3])
    return lr


EXTREME_FINITE = {"features x 1e18": lambda lr, x, y: lr.observe(x, y, features=lr.extract(x) * 1e18),
                  "pixels x 1e30": lambda lr, x, y: lr.observe(x * 1e30, y)}


@pytest.mark.parametrize("capture", [False, True], ids=["buffer-set", "capture-pending"])
@pytest.mark.parametrize("step", ["per-parameter", "plain"])
@pytest.mark.parametrize("kind", list(EXTREME_FINITE))
def test_extreme_finite_batch_that_overflows_head_bn_is_skipped_and_the_state_loads(env, tmp_path, kind, step,
                                                                                    capture):
    """Features finite but so large that the head's train-mode BN ``running_var`` overflows (the loss stays
    finite): the step used to train and leave Inf statistics, which ``save`` wrote and ``load`` refused.
    Now it is skipped like a non-finite loss: counted, nothing else changed, the state saves and loads, and
    predictions are those of before; predict/evaluate on such input change nothing either."""
    lr = _trained(env, optimizer_step=step)
    x, y = _x(env)
    if not capture:
        assert lr.observe(x, y)["skipped"] == 0  # the buffer is set: the skipped step runs the buffer pass
    assert lr._pending_capture == capture
    probe = env["batch"]([0, 1, 2, 3], 16)[0]
    pred = lr.predict(probe)
    before = snapshot(lr)
    out = EXTREME_FINITE[kind](lr, x, y)
    assert out["skipped"] == 1
    after = snapshot(lr)
    assert after["plain"]["counters"]["skipped_nonfinite"] == before["plain"]["counters"]["skipped_nonfinite"] + 1
    after["plain"]["counters"] = before["plain"]["counters"]
    assert_same(before, after, kind)
    lr.predict(x * 1e30)  # eval-mode BN: prediction on such input never updates statistics
    lr.evaluate([(1, [(x * 1e30, y)])], record=False)
    after = snapshot(lr)
    after["plain"]["counters"] = before["plain"]["counters"]
    assert_same(before, after, f"{kind}: predict/evaluate")
    lr.save(tmp_path / "state")
    back = LightCL.load(tmp_path / "state", env["ort"])
    assert all(bool(torch.isfinite(b).all()) for b in back.head.buffers())
    assert torch.equal(back.predict(probe), pred) and torch.equal(lr.predict(probe), pred)
    assert back.counters == lr.counters
    assert lr.observe(x, y)["skipped"] == 0 and not lr._pending_capture  # the next good batch trains
    count("extreme finite features (head BN overflow)", "python")


def test_finite_check_of_the_step_has_no_false_alarm_on_huge_finite_values():
    """The step's check sums each tensor first; a sum that overflows (huge but finite weights) must fall back
    to the element-wise check, never skip a good step."""
    from lightcl.engine.step import all_finite

    assert all_finite([torch.full((10,), 3e38), torch.full((4,), -3e38), torch.ones(3)])
    assert all_finite([torch.zeros(2, dtype=torch.long)]) and all_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not all_finite([torch.ones(3), torch.tensor([1.0, bad])])
    assert not all_finite([torch.tensor([float("inf"), -float("inf")])])  # a NaN sum from two infinities


class _InfiniteGradient(LossComponent):
    """A finite value (0) whose gradient is NaN: sqrt at 0 has an infinite slope, times a zero."""

    name = "inf_grad"
    on = False

    def __call__(self, context):
        zero = context.logits.sum() * 0.0
        return torch.sqrt(zero) if self.on else zero


def test_nonfinite_gradient_with_a_finite_loss(env, tmp_path):
    """Plain step: the gradients are checked before ``optimizer.step()``, so the batch is skipped with
    nothing changed. Per-parameter step (the update happens inside backward): the damage cannot be undone
    without a copy of the weights, so observe raises NonFiniteError and ``save`` refuses to write a head that
    ``load`` would refuse, leaving the saved state as it was."""
    x, y = _x(env)
    comp = _InfiniteGradient()
    lr = _trained(env, optimizer_step="plain", loss_components=[comp])
    assert lr.observe(x, y)["skipped"] == 0
    comp.on = True
    before = snapshot(lr)
    out = lr.observe(x, y)
    assert out["skipped"] == 1 and out["inf_grad"] == 0.0 and math.isfinite(out["loss"])
    after = snapshot(lr)
    assert after["plain"]["counters"]["skipped_nonfinite"] == before["plain"]["counters"]["skipped_nonfinite"] + 1
    after["plain"]["counters"] = before["plain"]["counters"]
    assert_same(before, after, "non-finite gradient, plain step")

    comp = _InfiniteGradient()
    lr = _trained(env, optimizer_step="per-parameter", loss_components=[comp])
    assert lr.observe(x, y)["skipped"] == 0
    state = tmp_path / "state"
    lr.save(state)
    files = tree_digest(state)
    comp.on = True
    if not lr.optimizer.in_backward:  # torch < 2.1: the per-parameter step updates in step(), as plain
        assert lr.observe(x, y)["skipped"] == 1
        return
    with pytest.raises(NonFiniteError, match="cannot be used or saved"):
        lr.observe(x, y)
    with pytest.raises(NonFiniteError, match="refusing to save.*NaN or Inf"):
        lr.save(state)
    assert tree_digest(state) == files
    with pytest.raises(NonFiniteError, match="refusing to save the head"):
        lr.head.save(state / "head.safetensors")
    assert tree_digest(state) == files
    LightCL.load(state, env["ort"], loss_components=[_InfiniteGradient()])


BAD_OPTIONS = [dict(lr=float("nan")), dict(lr=-1.0), dict(lr="0.1"), dict(momentum=-0.5), dict(weight_decay=-1.0),
               dict(beta=float("inf")), dict(beta=-1.0), dict(ratio=0.0), dict(ratio=1.5), dict(buffer_size=-1),
               dict(buffer_size=2.5), dict(buffer_policy="fifo"), dict(loss_slice="none"), dict(num_classes=0),
               dict(num_classes=2.5), dict(device="tpu"), dict(seed="a"), dict(unknown_option=1)]


@pytest.mark.parametrize("opts", BAD_OPTIONS, ids=[next(iter(o)) + "=" + repr(next(iter(o.values()))) for o in BAD_OPTIONS])
def test_bad_learner_options(env, opts):
    head = load_head(env["export"])
    before = {k: v.clone() for k, v in head.state_dict().items()}
    with pytest.raises(InputError):
        LightCL(env["ort"], head, **opts)
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())
    count("bad options/values", "python")


# ---------------------------------------------------------------- files: save / load / Head.load
def test_save_refuses_to_replace_what_is_not_a_state(env, tmp_path):
    lr = env["closed"]
    before = snapshot(lr)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8 precious")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    for target, exc, kind in ((foreign, InputError, "foreign file/dir"), (a_file, InputError, "foreign file/dir"),
                              (blocker / "state", StateError, "foreign file/dir")):
        with pytest.raises(exc):
            lr.save(target)
        count(kind, "python")
    assert (foreign / "holiday.jpg").read_bytes() == b"\xff\xd8 precious" and a_file.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "notes.txt", "photos"]  # no litter
    with pytest.raises(InputError):  # not JSON-serialisable extra: refused, previous state kept
        lr.extra["bad"] = object()
        try:
            lr.save(env["state"])
        finally:
            del lr.extra["bad"]
    count("bad options/values", "python")
    assert_same(before, snapshot(lr), "save")
    LightCL.load(env["state"], env["ort"])  # still the valid state


def test_load_refuses_missing_and_foreign(env, tmp_path):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "state.json").write_text("{not json")
    other_format = tmp_path / "other"
    other_format.mkdir()
    (other_format / "state.json").write_text(json.dumps({"format": "something-else/1"}))
    cases = [(tmp_path / "missing", StateError, "missing file/dir"), (env["export"], StateError, "foreign file/dir"),
             (env["export"] / "meta.json", StateError, "foreign file/dir"), (garbage, IntegrityError, "foreign file/dir"),
             (other_format, IntegrityError, "foreign file/dir")]
    for d, exc, kind in cases:
        with pytest.raises(exc):
            LightCL.load(d, env["ort"])
        count(kind, "python")
    for p, exc, kind in ((tmp_path / "missing.safetensors", StateError, "missing file/dir"),
                         (tmp_path, StateError, "foreign file/dir"),
                         (env["export"] / "frozen.onnx", IntegrityError, "foreign file/dir"),
                         (env["export"] / "frozen.safetensors", IntegrityError, "foreign file/dir"),
                         (env["export"] / "meta.json", IntegrityError, "foreign file/dir"),
                         (env["state"] / "learner.safetensors", IntegrityError, "foreign file/dir")):
        with pytest.raises(exc):
            Head.load(p)
        count(kind, "python")


# ---------------------------------------------------------------- extractors
@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_extractor_call_bad_input(env, backend):
    ext = env[backend]
    x = _x(env)[0]
    cases = [("wrong rank", x[0], ShapeError), ("wrong rank", x[None], ShapeError),
             ("wrong channel count", x[:, :1], ShapeError), ("wrong image size", x[..., :16, :16], ShapeError),
             ("wrong dtype", x.double(), ShapeError), ("wrong dtype", x.half(), ShapeError),
             ("wrong dtype", (x * 10).to(torch.uint8), ShapeError), ("not a tensor", x.numpy(), InputError),
             ("not a tensor", None, InputError), ("empty batch", x[:0], ShapeError),
             ("NaN/Inf pixels", _nan(x), NonFiniteError), ("NaN/Inf pixels", _nan(x, float("inf")), NonFiniteError)]
    for kind, bad, exc in cases:
        with pytest.raises(exc):
            ext(bad)
        count(kind, "python")
    good = ext(x)
    assert torch.allclose(ext(x.contiguous(memory_format=torch.channels_last)), good, atol=1e-5)  # layout: no error


def test_load_extractor_bad_input(env, tmp_path):
    export = env["export"]
    cases = [
        ("missing file/dir", lambda: load_extractor(tmp_path / "missing"), StateError),
        ("foreign file/dir", lambda: load_extractor(export / "meta.json"), StateError),
        ("foreign file/dir", lambda: load_extractor(env["state"]), StateError),
        ("bad options/values", lambda: load_extractor(None), InputError),
        ("bad options/values", lambda: load_extractor(export, backend="cuda"), InputError),
        ("bad options/values", lambda: load_extractor(export, device="tpu"), InputError),
        ("bad options/values", lambda: load_extractor(export, device="cuda"), MissingDependencyError),
        ("bad options/values", lambda: load_extractor(export, backend="tensorrt"), MissingDependencyError),
        ("bad options/values", lambda: load_extractor(export, backend="ort", bogus=1), InputError),
        ("bad options/values", lambda: load_extractor(export, bogus=1), InputError),
        ("bad options/values", lambda: load_extractor(export, backend="ort", threads=-1), InputError),
        ("bad options/values", lambda: load_extractor(export, backend="ort", threads="2"), InputError),
        ("bad options/values", lambda: load_extractor(export, backend="torch", threads=0), InputError),
        ("bad options/values", lambda: load_extractor(export, backend="torch", frozen_bn="frozen"), InputError),
        ("bad options/values", lambda: load_extractor(export, backend="ort", graph_optimization="max"), InputError),
        ("bad options/values", lambda: load_extractor(export, backend="ort", providers=["cuda"]), InputError),
        ("missing file/dir", lambda: load_extractor(export, backend="ort-int8"), StateError),
    ]
    threads = torch.get_num_threads()
    for kind, call, exc in cases:
        with pytest.raises(exc):
            call()
        count(kind, "python")
    assert torch.get_num_threads() == threads


# ---------------------------------------------------------------- datasets and export
def test_load_dataset_bad_input(tmp_path):
    from lightcl.data.datasets import load_dataset
    from lightcl.data.errors import DatasetNotFoundError

    junk = tmp_path / "junk.csv.gz"
    junk.write_bytes(b"not gzip")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [("bad options/values", ("nope",), InputError), ("bad options/values", (None,), InputError),
             ("bad options/values", ("",), InputError), ("bad options/values", ("digits+",), InputError),
             ("bad options/values", ("digits", "val"), InputError), ("bad options/values", ("folder",), InputError),
             ("missing file/dir", ("folder", "train", str(tmp_path / "missing")), DatasetNotFoundError),
             ("foreign file/dir", ("folder", "train", str(empty)), DatasetNotFoundError),
             ("foreign file/dir", ("mnist-5k", "train", str(junk)), IntegrityError),
             ("missing file/dir", ("cifar10", "train", str(empty)), DatasetNotFoundError)]
    for kind, args, exc in cases:
        with pytest.raises(exc):
            load_dataset(*args)
        count(kind, "python")


def test_export_checkpoint_bad_input(digits_ckpt, tmp_path):
    from lightcl.export.checkpoint import checkpoint_paths
    from lightcl.export.onnx_export import export_checkpoint

    st, js = checkpoint_paths(digits_ckpt)
    flipped = tmp_path / "flipped"
    fst, fjs = checkpoint_paths(flipped)
    data = bytearray(st.read_bytes())
    data[len(data) // 2] ^= 1
    fst.write_bytes(bytes(data))
    fjs.write_text(js.read_text())
    garbled = tmp_path / "garbled"
    gst, gjs = checkpoint_paths(garbled)
    gst.write_bytes(st.read_bytes())
    gjs.write_text("{oops")
    only_json = tmp_path / "onlyjson"
    checkpoint_paths(only_json)[1].write_text(js.read_text())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    out = tmp_path / "out"
    cases = [
        ("missing file/dir", dict(ckpt_path=tmp_path / "missing", out_dir=out), StateError),
        ("missing file/dir", dict(ckpt_path=only_json, out_dir=out), StateError),
        ("foreign file/dir", dict(ckpt_path=flipped, out_dir=out), IntegrityError),
        ("foreign file/dir", dict(ckpt_path=garbled, out_dir=out), IntegrityError),
        ("bad options/values", dict(ckpt_path=digits_ckpt, out_dir=out, split="layer9"), InputError),
        ("bad options/values", dict(ckpt_path=digits_ckpt, out_dir=out, split="fc"), InputError),
        ("bad options/values", dict(ckpt_path=digits_ckpt, out_dir=out, profile="tiny"), InputError),
        ("bad options/values", dict(ckpt_path=digits_ckpt, out_dir=out, atol=0), InputError),
        ("bad options/values", dict(ckpt_path=digits_ckpt, out_dir=out, atol=float("nan")), InputError),
        ("bad options/values", dict(ckpt_path=digits_ckpt, out_dir=out, min_agreement=1.5), InputError),
        ("bad options/values", dict(ckpt_path=digits_ckpt, out_dir=out, int8=True, calib_size=0), InputError),
        ("bad options/values", dict(ckpt_path=digits_ckpt, out_dir=out, tensorrt=True), MissingDependencyError),
        ("foreign file/dir", dict(ckpt_path=digits_ckpt, out_dir=foreign), InputError),
        ("foreign file/dir", dict(ckpt_path=digits_ckpt, out_dir=a_file), InputError),
    ]
    for kind, kw, exc in cases:
        with pytest.raises(exc):
            export_checkpoint(progress=False, **kw)
        count(kind, "python")
    assert not out.exists()
    assert (foreign / "keep.txt").read_text() == "keep" and a_file.read_text() == "keep"


# ---------------------------------------------------------------- CLI, in process
def run_cli(argv: list[str]) -> tuple[int, str, str]:
    from lightcl import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def cli_cases():
    c = []

    def add(kind, argv, rc=None):
        c.append(pytest.param(kind, argv, rc, id=f"{kind}/{' '.join(argv)[:70]}"))

    E, S, C = "{export}", "{state}", "{ckpt}"
    # learn
    add("missing file/dir", ["learn", "{root}/missing", "--state", "{root}/s1", "--quiet"])
    add("foreign file/dir", ["learn", S, "--state", "{root}/s1", "--quiet"])
    add("foreign file/dir", ["learn", E, "--state", "{foreign}", "--quiet"])
    add("foreign file/dir", ["learn", E, "--state", "{afile}", "--quiet"])
    add("foreign file/dir", ["learn", E, "--state", S, "--resume", "--quiet"])  # another scenario's state
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--scenario", "nope", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--batch-size", "0", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--epochs", "0", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--epochs", "-3", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--lr", "nan", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--lr", "-1", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--momentum", "-1", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--ratio", "2", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--buffer-size", "-5", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--beta", "inf", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--threads", "-2", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--max-tasks", "0", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--backend", "cuda", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--device", "cuda", "--quiet"], 3)
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--device", "tpu", "--quiet"])
    add("bad options/values", ["learn", E, "--state", "{root}/s1", "--batch-size", "x"], 2)
    add("bad options/values", ["learn", E], 2)
    # predict
    add("missing file/dir", ["predict", "{root}/missing", "--dataset", "digits"])
    add("foreign file/dir", ["predict", E, "--dataset", "digits"])
    add("foreign file/dir", ["predict", "{corrupt}", "--dataset", "digits"])
    add("foreign file/dir", ["predict", S, "--dataset", "digits", "--export", "{foreign}"])
    add("missing file/dir", ["predict", S, "--dataset", "digits", "--export", "{root}/missing"])
    add("bad options/values", ["predict", S, "--dataset", "digits", "--batch-size", "0"])
    add("bad options/values", ["predict", S, "--dataset", "nope"])
    add("unknown task id", ["predict", S, "--dataset", "digits", "--mode", "til", "--task-id", "99"])
    add("unknown task id", ["predict", S, "--dataset", "digits", "--mode", "til", "--task-id", "-1"])
    add("foreign file/dir", ["predict", S, "--images", "{badpng}"])
    add("missing file/dir", ["predict", S, "--images", "{root}/missing"])
    add("bad options/values", ["predict", S], 2)
    # export
    add("missing file/dir", ["export", "{root}/missing", "--out", "{root}/e1", "--quiet"])
    add("foreign file/dir", ["export", "{flipped}", "--out", "{root}/e1", "--quiet"])
    add("bad options/values", ["export", C, "--out", "{root}/e1", "--split", "layer9", "--quiet"])
    add("bad options/values", ["export", C, "--out", "{root}/e1", "--atol", "0", "--quiet"])
    add("bad options/values", ["export", C, "--out", "{root}/e1", "--min-agreement", "2", "--quiet"])
    add("bad options/values", ["export", C, "--out", "{root}/e1", "--fp16", "--quiet"])
    add("bad options/values", ["export", C, "--out", "{root}/e1", "--tensorrt", "--quiet"], 3)
    add("bad options/values", ["export", C, "--out", "{root}/e1", "--profile", "tiny"], 2)
    add("foreign file/dir", ["export", C, "--out", "{foreign}", "--quiet"])
    add("foreign file/dir", ["export", C, "--out", "{afile}", "--quiet"])
    # bench latency / update
    add("missing file/dir", ["bench", "latency", "{root}/missing", "--quiet"])
    add("foreign file/dir", ["bench", "latency", S, "--quiet"])
    add("bad options/values", ["bench", "latency", E, "--batch", "0", "--quiet"])
    add("bad options/values", ["bench", "latency", E, "--batch", "a", "--quiet"])
    add("bad options/values", ["bench", "latency", E, "--backend", "gpu", "--quiet"])
    add("bad options/values", ["bench", "latency", E, "--iters", "0", "--quiet"])
    add("bad options/values", ["bench", "latency", E, "--seconds", "-1", "--quiet"])
    add("bad options/values", ["bench", "latency", E, "--threads", "0", "--quiet"])
    add("bad options/values", ["bench", "latency", E, "--warmup", "-1", "--iters", "5", "--quiet"])
    add("missing file/dir", ["bench", "latency", E, "--backend", "ort-int8", "--quiet"])
    add("missing file/dir", ["bench", "update", "{root}/missing"])
    add("bad options/values", ["bench", "update", E, "--modes", "nope"])
    add("bad options/values", ["bench", "update", E, "--batch", "0"])
    add("bad options/values", ["bench", "update", E, "--steps", "0"])
    add("bad options/values", ["bench", "update", E, "--threads", "-1"])
    add("bad options/values", ["bench", "nope"], 2)
    # pretrain
    add("bad options/values", ["pretrain", "--dataset", "nope", "--out", "{root}/p"])
    for opt, val in (("--epochs", "0"), ("--batch-size", "0"), ("--lr", "-1"), ("--lr", "nan"), ("--width", "0"),
                     ("--arch", "vgg"), ("--subset", "0"), ("--threads", "-1")):
        add("bad options/values", ["pretrain", "--dataset", "digits", "--out", "{root}/p", opt, val])
    add("foreign file/dir", ["pretrain", "--dataset", "digits", "--out", "{afile}/p"])
    add("missing file/dir", ["pretrain", "--dataset", "folder", "--data-path", "{empty}", "--out", "{root}/p"])
    add("bad options/values", ["pretrain", "--out", "{root}/p"], 2)
    # analyze (when present)
    add("missing file/dir", ["analyze", "{root}/missing", "--dataset", "digits", "--quiet"])
    add("bad options/values", ["analyze", C, "--dataset", "nope", "--quiet"])
    add("bad options/values", ["analyze", C, "--dataset", "digits", "--epochs", "0", "--quiet"])
    add("bad options/values", ["analyze", C, "--dataset", "digits", "--old-classes", "1,x", "--quiet"])
    add("bad options/values", ["analyze", C, "--dataset", "digits", "--old-classes", "0,1", "--new-classes", "1,2",
                               "--quiet"])
    add("labels outside the task's classes", ["analyze", C, "--dataset", "digits", "--old-classes", "0,99", "--quiet"])
    for opt, val in (("--threads", "-1"), ("--max-train", "0"), ("--lr", "nan"), ("--momentum", "-1"),
                     ("--lp-threshold", "nan"), ("--ms-threshold", "inf")):
        add("bad options/values", ["analyze", C, "--dataset", "digits", opt, val, "--quiet"])
    add("bad options/values", ["analyze", C], 2)
    return c


@pytest.fixture(scope="module")
def cli_paths(env, digits_ckpt, tmp_path_factory):
    from lightcl.export.checkpoint import checkpoint_paths

    root = tmp_path_factory.mktemp("cli")
    foreign = root / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    afile = root / "notes.txt"
    afile.write_text("precious")
    (root / "img").mkdir()
    (root / "img" / "bad.png").write_bytes(b"not a png")
    (root / "empty").mkdir()
    corrupt = root / "corrupt"
    import shutil

    shutil.copytree(env["state"], corrupt)
    data = bytearray((corrupt / "head.safetensors").read_bytes())
    data[len(data) // 2] ^= 4
    (corrupt / "head.safetensors").write_bytes(bytes(data))
    st, js = checkpoint_paths(digits_ckpt)
    fst, fjs = checkpoint_paths(root / "flipped")
    b = bytearray(st.read_bytes())
    b[100] ^= 1
    fst.write_bytes(bytes(b))
    fjs.write_text(js.read_text())
    return {"export": str(env["export"]), "state": str(env["state"]), "ckpt": str(digits_ckpt), "root": str(root),
            "foreign": str(foreign), "afile": str(afile), "badpng": str(root / "img"), "empty": str(root / "empty"),
            "corrupt": str(corrupt), "flipped": str(root / "flipped")}


@pytest.mark.parametrize("kind,argv,rc_want", cli_cases())
def test_cli_bad_input_one_line_nonzero_state_unchanged(cli_paths, env, kind, argv, rc_want):
    from lightcl import cli

    if argv[0] == "analyze" and cli._load("analyze") is None:
        pytest.skip("analyze verb not built")
    argv = [a.format(**cli_paths) for a in argv]
    watched = [Path(cli_paths[k]) for k in ("state", "foreign", "afile", "export")]
    before = {str(p): tree_digest(p) if p.is_dir() else p.read_bytes() for p in watched}
    threads = torch.get_num_threads()
    try:
        rc, out, err = run_cli(argv)
    finally:
        torch.set_num_threads(threads)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0, (argv, out, err)
    if rc_want is not None:
        assert rc == rc_want, (argv, rc, err)
    assert len(lines) == 1, f"{argv}: expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err + out and lines[0].startswith("lightcl"), err
    after = {str(p): tree_digest(p) if p.is_dir() else p.read_bytes() for p in watched}
    assert after == before, f"{argv} changed files it was handed"
    assert not (Path(cli_paths["root"]) / "s1").exists() and not (Path(cli_paths["root"]) / "e1").exists()
    count(kind, "cli")


def test_cli_errors_end_to_end_in_real_processes(cli_paths):
    """The same contract from a real `python -m lightcl` process (what a robot's supervisor sees)."""
    runs = [["learn", cli_paths["export"], "--state", cli_paths["foreign"], "--quiet"],
            ["predict", cli_paths["corrupt"], "--dataset", "digits"],
            ["learn", cli_paths["export"], "--state", cli_paths["root"] + "/s2", "--lr", "nan", "--quiet"],
            ["learn", cli_paths["export"]]]
    procs = [subprocess.Popen([sys.executable, "-m", "lightcl", *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for a in runs]
    errs = []
    for argv, p in zip(runs, procs):
        out, err = p.communicate(timeout=300)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert p.returncode in (1, 2) and len(lines) == 1 and "Traceback" not in err, (argv, p.returncode, err)
        errs.append(lines[0])
        count("end-to-end subprocess", "cli")
    assert "refusing to replace" in errs[0] and "head.safetensors" in errs[1] and "lr" in errs[2], errs
    assert (Path(cli_paths["foreign"]) / "holiday.jpg").read_bytes() == b"precious"
