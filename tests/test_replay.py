"""Feature replay under a byte budget (engine/replay.py, engine/codecs.py) and task-free learning
(engine/taskfree.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lightcl.engine.codecs import Int8ChannelCodec, ProductQuantizer, make_codec
from lightcl.engine.errors import InputError, IntegrityError, UnknownClassError
from lightcl.engine.head import Head
from lightcl.engine.learner import LightCL
from lightcl.engine.replay import ReplayMemory, parse_bytes
from lightcl.engine.taskfree import TaskFree

DATA = Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_state_v1", DATA / "make_state_v1.py")
V1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(V1)


def _learner(**options) -> LightCL:
    torch.manual_seed(0)
    return LightCL(V1.PoolExtractor(), Head(V1.HEAD_CONFIG), **{**V1.OPTIONS, **options})


def _two_tasks(lr: LightCL) -> LightCL:
    lr.begin_task(0, [0, 1])
    for x, y in V1.batches(1, [0, 1], 3):
        lr.observe(x, y)
    lr.end_task()
    lr.begin_task(1, [2, 3])
    for x, y in V1.batches(4, [2, 3], 2):
        lr.observe(x, y)
    return lr


def test_parse_bytes_is_strict():
    assert parse_bytes("2MiB") == 2 << 20
    assert parse_bytes("0.25MiB") == 1 << 18
    assert parse_bytes("512 KiB") == 512 * 1024
    assert parse_bytes("1.5MB") == 1_500_000
    assert parse_bytes(4096) == 4096
    for bad in ("2", "2 MiBs", "-1MiB", "0B", "MiB", "2e3MiB", True, 2.0, None, "nan MiB"):
        with pytest.raises(InputError):
            parse_bytes(bad)
    with pytest.raises(InputError):
        _learner(replay_budget="2 megs")
    with pytest.raises(InputError):
        _learner(replay_budget="1MiB", replay_codec="zip")


@pytest.mark.parametrize("codec", ["int8", "pq"])
def test_budget_never_exceeded_at_224_features(codec, capsys):
    """ResNet-18 (width 64) split at layer3 on 224x224 input gives [256, 14, 14] features: a 1 MiB budget."""
    shape = (256, 14, 14)
    budget = parse_bytes("1MiB")
    mem = ReplayMemory(budget, make_codec(codec, shape), seed=0)
    g = torch.Generator().manual_seed(0)
    for step in range(12):
        f = torch.relu(torch.randn(16, *shape, generator=g))
        y = torch.randint(0, 3 + step, (16,), generator=g)
        mem.add(f, y)
        assert mem.nbytes() <= budget
    assert len(mem) == mem.capacity  # full, and still within budget
    d = mem.describe()
    with capsys.disabled():
        print(f"\n[replay] {codec} 1 MiB at [256,14,14]: {d['bytes_per_sample']} bytes/sample, "
              f"{d['samples']} samples, {d['bytes']} of {budget} bytes")
    assert d["bytes_per_sample"] == (256 * 196 + 2 * 256 + 8 if codec == "int8" else 196 * 32 + 8)


def test_codecs_reconstruct():
    g = torch.Generator().manual_seed(1)
    f = torch.relu(torch.randn(8, 16, 4, 4, generator=g))
    q = Int8ChannelCodec(f.shape[1:])
    err = (q.decode(q.encode(f)) - f).abs().max() / f.abs().max()
    assert err < 0.01
    pq = ProductQuantizer(f.shape[1:], subvectors=4, codes=16)
    pq.fit(f, g)
    rec = pq.decode(pq.encode(f))
    assert rec.shape == f.shape
    rel = ((rec - f).pow(2).mean() / f.pow(2).mean()).item()
    assert rel < 0.5  # 16 codes per 4-dim piece: coarse but far from nothing (a zero reconstruction gives 1.0)


def test_storage_and_sampling_are_class_balanced():
    mem = ReplayMemory(40 * (8 * 1 * 1 + 2 * 8 + 8), make_codec("int8", (8, 1, 1)), seed=0)
    assert mem.capacity == 40
    g = torch.Generator().manual_seed(0)
    mem.add(torch.randn(200, 8, 1, 1, generator=g), torch.zeros(200, dtype=torch.long))  # one class floods it
    assert mem.class_counts() == {0: 40}
    for c in (1, 2, 3):
        mem.add(torch.randn(30, 8, 1, 1, generator=g), torch.full((30,), c))
    counts = mem.class_counts()
    assert sum(counts.values()) == 40 and max(counts.values()) - min(counts.values()) <= 1
    mem2 = ReplayMemory(mem.budget, make_codec("int8", (8, 1, 1)), seed=0)
    mem2.add(torch.randn(30, 8, 1, 1, generator=g), torch.tensor([0] * 27 + [1] * 3))
    _, cols = mem2.sample(2000)
    assert 0.4 < float((cols == 1).float().mean()) < 0.6  # 3 of 30 stored, drawn half the time


def test_storage_is_allocated_once_and_filled_in_place():
    """Codes are written into storage sized for the capacity (no copy of the memory per new sample), in the
    order offered while there is room; after a reload it still fills in place."""
    mem = ReplayMemory(40 * (8 + 2 * 8 + 8), make_codec("int8", (8, 1, 1)), seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(25, 8, 1, 1, generator=g)
    mem.add(x[:10], torch.arange(10) % 3)
    ptrs = {k: v.data_ptr() for k, v in mem.codes.items()}
    mem.add(x[10:], torch.arange(10, 25) % 3)
    assert len(mem) == 25 and {k: v.data_ptr() for k, v in mem.codes.items()} == ptrs
    want = mem.codec.encode(x)
    assert all(torch.equal(mem.codes[k], want[k]) for k in want)
    assert torch.equal(mem.labels, torch.arange(25) % 3)
    mem.add(torch.randn(100, 8, 1, 1, generator=g), torch.arange(100) % 4)  # full: evictions write in place
    assert len(mem) == mem.capacity == 40 and {k: v.data_ptr() for k, v in mem.codes.items()} == ptrs
    back = ReplayMemory(mem.budget, make_codec("int8", (8, 1, 1)), seed=0)
    half = {k: (v[:20] if k.startswith("code.") or k == "labels" else v) for k, v in mem.state_dict().items()}
    back.load_state_dict(half)
    assert len(back) == 20 and all(torch.equal(back.codes[k], mem.codes[k][:20]) for k in want)
    back.add(x[:5], torch.zeros(5, dtype=torch.long))
    assert len(back) == 25 and torch.equal(back.labels[20:], torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("codec", ["int8", "pq"])
def test_learner_replay_state_round_trip(codec, tmp_path):
    lr = _two_tasks(_learner(replay_budget="64KiB", replay_codec=codec, beta=0.0))
    rep = lr.memory_report()
    assert 0 < rep["replay_bytes"] <= 64 * 1024
    assert set(lr.replay.memory.class_counts()) == {0, 1, 2, 3}
    lr.save(tmp_path / "s")
    back = LightCL.load(tmp_path / "s", V1.PoolExtractor())
    assert back.replay.memory.class_counts() == lr.replay.memory.class_counts()
    for k, v in lr.replay.memory.codes.items():
        assert torch.equal(back.replay.memory.codes[k], v)
    x, y = V1.batches(9, [2, 3], 1)[0]
    a, b = lr.observe(x, y), back.observe(x, y)  # same RNG, same memory: the same step
    assert a["replay"] == pytest.approx(b["replay"], rel=1e-6)


def test_state_without_replay_still_loads(tmp_path):
    plain = _two_tasks(_learner())
    sd = plain.state_dict()
    assert "replay" not in sd
    for k in [k for k in sd["config"] if k.startswith("replay_")]:
        del sd["config"][k]  # a state made before the option existed
    fresh = _learner()
    fresh.load_state_dict(sd)
    assert fresh.replay is None
    plain.save(tmp_path / "plain")
    assert LightCL.load(tmp_path / "plain", V1.PoolExtractor()).replay is None
    with_replay = _two_tasks(_learner(replay_budget="64KiB"))
    sd = with_replay.state_dict()
    del sd["replay"]  # a replay learner's state without its memory: loads, the memory starts empty
    lr = _learner(replay_budget="64KiB")
    lr.load_state_dict(sd)
    assert len(lr.replay.memory) == 0


def test_bad_replay_state_is_refused():
    lr = _two_tasks(_learner(replay_budget="64KiB"))
    sd = lr.state_dict()
    bad = dict(sd, replay=dict(sd["replay"], labels=sd["replay"]["labels"] + 50))
    with pytest.raises(IntegrityError, match="never learned"):
        _learner(replay_budget="64KiB").load_state_dict(bad)
    bad = dict(sd, replay=dict(sd["replay"], budget=1 << 20))
    with pytest.raises(IntegrityError):
        _learner(replay_budget="64KiB").load_state_dict(bad)
    small = _learner(replay_budget=f"{3 * 152}B")
    with pytest.raises(IntegrityError):
        small.load_state_dict(dict(sd, config=dict(sd["config"], replay_budget=f"{3 * 152}B")))


def test_replay_without_penalty_and_with_fixed_classifier():
    for opts in ({"beta": 0.0, "num_classes": None}, {"beta": 2e-4, "num_classes": 4, "loss_slice": "all"}):
        lr = _two_tasks(_learner(replay_budget="16KiB", **opts))
        assert lr.head.num_classes == 4
        x, y = V1.batches(11, [2, 3], 1)[0]
        out = lr.observe(x, y)
        assert out["replay"] > 0


def test_task_free_stream_grows_columns_and_refreshes(tmp_path):
    lr = _learner(num_classes=None, loss_slice="all", replay_budget="64KiB")
    with pytest.raises(InputError):
        TaskFree(_learner(), refresh_every=3)  # task-sliced CE has no meaning without tasks
    tf = TaskFree(lr, refresh_every=3)
    refreshed = 0
    for i in range(10):
        x, y = V1.batches(20 + i, [0, 1, 2, 3], 1)[0]
        if i < 4:
            y = y % 2  # classes 2 and 3 arrive at step 4, then all four recur in any order
        out = tf.observe(x, y)
        refreshed += out["refreshed"]
    assert lr.head.num_classes == 4 and sorted(lr.class_index) == [0, 1, 2, 3]
    assert refreshed >= 3 and lr.memory.masks and len(lr.memory) > 0
    lr.save(tmp_path / "s")
    back = LightCL.load(tmp_path / "s", V1.PoolExtractor())
    TaskFree(back, refresh_every=3).observe(x, y)
    lr2 = _learner()
    lr2.begin_task(0, [0, 1])
    with pytest.raises(UnknownClassError):
        lr2.observe(x, y)  # the task API is unchanged: a task's batch holds its own classes only


def test_blurry_tasks_move_a_fraction_and_keep_every_sample():
    import numpy as np

    from lightcl.data.blurry import blur_tasks
    from lightcl.data.tasks import Task

    y = np.repeat(np.arange(10), 50)
    tasks = [Task(t, [2 * t, 2 * t + 1], np.where((y // 2) == t)[0], np.arange(3)) for t in range(5)]
    blurred = blur_tasks(tasks, 0.1, seed=0)
    all_idx = np.concatenate([t.train_idx for t in blurred])
    assert sorted(all_idx.tolist()) == list(range(500))  # nothing lost, nothing twice
    for t, b in zip(tasks, blurred):
        own = np.isin(y[b.train_idx], t.classes)
        assert own.sum() == 90 and (~own).sum() > 0  # 10% of its 100 samples gone; others' samples arrived
        assert b.classes == t.classes and b.test_idx is t.test_idx
    assert blur_tasks(tasks, 0.0) is tasks
    with pytest.raises(InputError):
        blur_tasks(tasks, 1.0)


@pytest.mark.parametrize("k", [0, -3, True, 2.5, (1 << 20) + 1, 10**12])
def test_absurd_replay_batches_are_refused_before_any_step(k):
    with pytest.raises(InputError, match="replay_batch"):
        _learner(replay_budget="1MiB", replay_batch=k)


@pytest.mark.parametrize("codec", ["int8", "pq"])
def test_replay_backwarded_apart_gives_the_joint_gradient(codec, monkeypatch):
    """The replay term is backwarded after the batch's (engine/step.py: its activations and the batch's never
    alive together): the same steps, losses and weights as one backward of the summed loss, to float tolerance."""
    from lightcl.engine.replay import FeatureReplay

    opts = dict(replay_budget="64KiB", replay_codec=codec, optimizer_step="plain")  # per-parameter: always joint
    apart = _two_tasks(_learner(**opts))
    monkeypatch.setattr(FeatureReplay, "separable", False)
    joint = _two_tasks(_learner(**opts))
    assert apart.counters["steps"] == joint.counters["steps"] > 0
    for (k, a), b in zip(apart.head.state_dict().items(), joint.head.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=1e-5), k
    x, y = next(iter(V1.batches(9, [2, 3], 1)))
    oa, oj = apart.observe(x, y), joint.observe(x, y)
    assert oa["replay"] > 0 and oa["loss"] == pytest.approx(oj["loss"], rel=1e-5)


def test_a_non_finite_replay_term_skips_the_step_and_changes_nothing(monkeypatch):
    from lightcl.engine.replay import FeatureReplay

    lr = _two_tasks(_learner(replay_budget="64KiB", replay_codec="int8", optimizer_step="plain"))
    before = {k: v.clone() for k, v in lr.head.state_dict().items()}
    steps = lr.counters["steps"]
    monkeypatch.setattr(FeatureReplay, "__call__", lambda self, ctx: torch.tensor(float("nan")))
    x, y = next(iter(V1.batches(9, [2, 3], 1)))
    out = lr.observe(x, y)
    assert out["skipped"] == 1 and lr.counters["steps"] == steps
    assert all(torch.equal(v, before[k]) for k, v in lr.head.state_dict().items())
    assert all(p.grad is None for p in lr.head.parameters())


def _restated_updates(monkeypatch, k: int) -> None:
    """An independent restatement of ``replay_steps``: after each applied update, before the batch enters the
    memory, ``k`` times: draw a replay batch, one CE over the seen columns through the head, a plain SGD step."""
    import torch.nn.functional as F

    from lightcl.engine.replay import FeatureReplay

    original = FeatureReplay.after_step

    def after_step(self, context):
        lrn = getattr(self, "_test_learner", None)  # only the restated learner
        for _ in range(k if lrn is not None and len(self.memory) else 0):
            feats, cols = self.memory.sample(self.batch_size)
            seen = torch.tensor(context.seen_columns)
            target = (cols[:, None] == seen[None, :]).float().argmax(1)
            loss = F.cross_entropy(context.head(feats)[:, seen], target)
            lrn.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lrn.optimizer.step()
        original(self, context)

    monkeypatch.setattr(FeatureReplay, "after_step", after_step)


@pytest.mark.parametrize("optimizer_step", ["plain", "per-parameter"])
def test_replay_steps_are_the_restated_extra_updates(optimizer_step, monkeypatch):
    opts = dict(replay_budget="64KiB", replay_codec="int8", optimizer_step=optimizer_step, momentum=0.5)
    ours = _two_tasks(_learner(replay_steps=3, **opts))
    restated = _learner(replay_steps=0, **opts)
    restated.replay._test_learner = restated
    _restated_updates(monkeypatch, 3)
    _two_tasks(restated)
    assert ours.counters["steps"] == restated.counters["steps"] > 0
    assert ours.counters["replay_updates"] == 3 * (ours.counters["steps"] - 1)  # the first batch has no memory
    for (k, a), b in zip(ours.head.state_dict().items(), restated.head.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4), k
    moved = _two_tasks(_learner(replay_steps=0, **opts))  # the restatement is not a no-op
    assert not torch.allclose(moved.head.state_dict()["fc.weight"], ours.head.state_dict()["fc.weight"], atol=1e-4)


def test_replay_steps_report_and_need_a_memory():
    lr = _learner(replay_budget="64KiB", replay_steps=2)
    lr.begin_task(0, [0, 1])
    batches = V1.batches(1, [0, 1], 2)
    assert lr.observe(*batches[0])["replay_updates"] == 0  # nothing stored yet
    assert lr.observe(*batches[1])["replay_updates"] == 2
    plain = _learner(replay_budget="64KiB")
    plain.begin_task(0, [0, 1])
    assert "replay_updates" not in plain.observe(*batches[0])


@pytest.mark.parametrize("k", [-1, True, 1.5, "3", 1001])
def test_absurd_replay_steps_are_refused(k):
    with pytest.raises(InputError, match="replay_steps"):
        _learner(replay_budget="1MiB", replay_steps=k)


def test_a_non_finite_replay_update_is_not_applied_and_the_batch_update_stays(monkeypatch):
    """The batch's own update (with its replay term) is applied; the extra update whose loss is NaN is not: the
    head ends exactly where a learner without extra updates ends."""
    from lightcl.engine.replay import FeatureReplay

    ours = _two_tasks(_learner(replay_budget="64KiB", replay_steps=1))
    ref = _two_tasks(_learner(replay_budget="64KiB", replay_steps=0))
    ours.load_state_dict(ref.state_dict() | {"config": ours.state_dict()["config"]})
    real = FeatureReplay.__call__
    calls = []

    def flaky(self, ctx):
        calls.append(1)
        return real(self, ctx) if len(calls) % 2 else torch.tensor(float("nan"))

    monkeypatch.setattr(FeatureReplay, "__call__", flaky)
    x, y = next(iter(V1.batches(9, [2, 3], 1)))
    out, ref_out = ours.observe(x, y), None
    calls.clear()
    ref_out = ref.observe(x, y)
    assert out["skipped"] == 0 and out["replay_updates"] == 0 and ours.counters["skipped_replay_updates"] == 1
    assert out["loss"] == pytest.approx(ref_out["loss"], rel=1e-6)
    for (k, a), b in zip(ours.head.state_dict().items(), ref.head.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(p.grad is None for p in ours.head.parameters())
