"""The benchmark methods: one contract, real digits data, width-16 backbone, a few steps each."""
from __future__ import annotations

import json

import pytest
import torch

from lightcl.bench.methods import (ENGINE_METHODS, METHODS, create_method, is_built, method_class,
                                   parse_methods)
from lightcl.bench.methods.base import MethodContext, forward_flops
from lightcl.bench.methods import config_class
from lightcl.bench.methods.configs import field_names
from lightcl.engine.reservoir import Reservoir
from lightcl.engine.errors import InputError

BUILT = [m for m in METHODS if m != "lightcl-sparse"]


@pytest.fixture(scope="module")
def setting(digits_ckpt, digits_export):
    from lightcl.bench.runner import ScenarioData
    from lightcl.bench.scenarios import get_scenario
    from lightcl.engine.export_dir import load_export_meta

    s = get_scenario("smoke", epochs=1)
    meta = load_export_meta(digits_export)
    data = ScenarioData(s, meta["normalization"])
    from lightcl.bench.suite import _frozen_figures

    frozen = _frozen_figures(str(digits_ckpt), s.split, (3, 32, 32))

    def ctx(seed=0):
        return MethodContext(scenario=s, ckpt=str(digits_ckpt), export_dir=str(digits_export), num_classes=10,
                             seed=seed, threads=1, extra=dict(frozen))

    return s, data, ctx


def _batches(data, task, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for x, y in data.train_batches(task, g):
        out.append((x, y))
        if len(out) == n:
            break
    return out


def _run(method, data, tasks=2, steps=2):
    for task in data.tasks[:tasks]:
        method.begin_task(task.task_id, task.classes, n_train=len(task.train_idx))
        for x, y in _batches(data, task, steps, seed=task.task_id):
            out = method.observe(x, y)
            assert isinstance(out, dict) and all(torch.isfinite(torch.tensor(v)) for v in out.values())
        method.end_task()


@pytest.mark.parametrize("name", BUILT)
def test_every_method_follows_the_contract(setting, name):
    from lightcl.bench.suite import evaluate, load_config

    s, data, ctx = setting
    hp = load_config(name, "smoke")["hyperparameters"]
    m = create_method(name, ctx(), **hp)
    _run(m, data)
    x, _ = next(iter(data.test.batches(data.tasks[0].test_idx, 8, data.pre_eval)))
    lg = m.logits(x)
    assert lg.shape == (len(x), 10) and torch.isfinite(lg).all()
    assert m.task_indices(1) == [2, 3] and m.seen_indices() == [0, 1, 2, 3]
    til, cil = evaluate(m, data.test_stream(2))
    assert len(til) == len(cil) == 2
    assert all(0.0 <= a <= 1.0 for a in til + cil)
    assert all(t >= c for t, c in zip(til, cil))  # TIL masks more classes away than CIL
    assert m.flops > 0
    acc = m.accounting()
    assert set(acc) >= {"weights", "trainable", "optimizer_slots", "extra_state", "activations", "buffer"}
    assert 0 < acc["trainable"] <= acc["weights"] and acc["activations"] > 0
    if name in ENGINE_METHODS or name.startswith("lightcl") or name == "pnn":
        assert acc["trainable"] < acc["weights"]  # the frozen part (PNN: the old columns) holds no gradients
    else:
        assert acc["trainable"] == acc["weights"]  # baselines train the whole model


def test_lightcl_sparse_is_registered_and_built():
    # its contract run lives in tests/test_suite.py (it builds a pruned export, too slow to repeat here)
    assert "lightcl-sparse" in METHODS and is_built("lightcl-sparse")
    assert method_class("lightcl-sparse").name == "lightcl-sparse"


def test_parse_methods():
    assert parse_methods("all") == METHODS and parse_methods(None) == METHODS
    assert parse_methods("er, sgd,er") == ["er", "sgd"]
    with pytest.raises(InputError, match="unknown method"):
        parse_methods("sgd,nope")


def test_every_built_method_has_a_cited_config():
    from lightcl.bench.suite import CONFIG_DIR, load_config

    for name in BUILT:
        doc = json.loads((CONFIG_DIR / f"{name}.json").read_text())
        assert doc["method"] == name and doc["version"] >= 1 and doc["source"]
        for scen, entry in doc.get("scenarios", {}).items():
            assert entry.get("source"), (name, scen)
        cfg = load_config(name, "offline")
        assert cfg["hyperparameters"] and cfg["sha256"]
        known = field_names(config_class(name))  # the method's typed config (Method.config_class)
        for scen in ("smoke", "offline", "offline-hard", "paper-cifar10", "paper-tinyimg"):
            assert set(load_config(name, scen)["hyperparameters"]) <= set(known), (name, scen)
    assert load_config("ewc", "paper-tinyimg")["hyperparameters"]["e_lambda"] == 25.0
    assert "seq-tinyimg" in load_config("ewc", "paper-tinyimg")["source"]
    assert load_config("lightcl", "offline")["hyperparameters"] == {"lr": 0.01, "beta": 2e-4, "buffer_size": 15,
                                                                     "ratio": 0.15}


def test_unknown_hyperparameter_refused(setting):
    _, _, ctx = setting
    with pytest.raises(InputError, match="unknown hyperparameter"):
        create_method("sgd", ctx(), lr=0.1, nope=1)


def test_lightcl_method_is_the_engine_unchanged(setting, digits_export):
    """The suite's `lightcl` is exactly LightCL(load_extractor(ort), load_head): same seed, same logits."""
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL

    s, data, ctx = setting
    m = create_method("lightcl", ctx(seed=3))
    ref = LightCL(load_extractor(digits_export, backend="ort", spin=False, threads=1), load_head(digits_export),
                  num_classes=10, seed=3)
    for task in data.tasks[:2]:
        m.begin_task(task.task_id, task.classes)
        ref.begin_task(task.task_id, task.classes)
        for x, y in _batches(data, task, 2, seed=task.task_id):
            m.observe(x, y)
            ref.observe(x, y)
        m.end_task()
        ref.end_task()
    x, _ = next(iter(data.test.batches(data.tasks[1].test_idx, 16, data.pre_eval)))
    assert torch.equal(m.logits(x), ref.logits(x))
    assert m.describe()["extractor"]["backend"] == "ort"


def test_reference_takes_its_buffer_from_the_new_tasks_first_batch(setting):
    s, data, ctx = setting
    m = create_method("lightcl-reference", ctx())
    _run(m, data, tasks=1)
    assert len(m.ref.memory) == 0
    t1 = data.tasks[1]
    m.begin_task(t1.task_id, t1.classes)
    (x0, y0), (x1, y1) = _batches(data, t1, 2, seed=9)
    m.observe(x0, y0)
    assert torch.equal(m.ref.memory.features, x0[:15])
    m.observe(x1, y1)
    assert torch.equal(m.ref.memory.features, x0[:15])


def test_joint_keeps_one_copy_of_each_sample(setting):
    s, data, ctx = setting
    m = create_method("joint", ctx(), lr=0.01)
    t0 = data.tasks[0]
    m.begin_task(0, t0.classes, n_train=40)
    for x, y in _batches(data, t0, 3):  # 96 samples offered, only the first 40 are kept
        m.observe(x, y)
    m.end_task()
    assert len(m.old_x) == 1 and len(m.old_x[0]) == 40
    assert m.replayed_per_step() == 32


def test_ewc_penalty_after_first_task(setting):
    s, data, ctx = setting
    m = create_method("ewc", ctx(), lr=0.03, e_lambda=10.0, gamma=1.0, fisher_samples=8)
    assert float(m.penalty()) == 0.0
    _run(m, data, tasks=1, steps=1)
    assert m.fisher is not None and all(torch.isfinite(f).all() for f in m.fisher)
    assert float(m.penalty()) == 0.0  # right at the anchor
    with torch.no_grad():
        next(m.net.parameters()).add_(0.1)
    assert float(m.penalty()) > 0.0


def test_replay_buffers_respect_buffer_size(setting):
    s, data, ctx = setting
    for name in ("er", "derpp", "latent-replay"):
        m = create_method(name, ctx(), lr=0.01, buffer_size=5, minibatch_size=4)
        _run(m, data, tasks=2, steps=2)
        assert len(m.buffer) == 5
        assert m.accounting()["samples_per_step"] == 32 + (8 if name == "derpp" else 4)


def test_reservoir_is_uniform_and_bounded():
    counts = torch.zeros(100)
    for seed in range(300):
        r = Reservoir(10, torch.Generator().manual_seed(seed))
        for i in range(0, 100, 7):
            v = torch.arange(i, min(i + 7, 100))
            r.add(v=v)
        assert len(r) == 10
        counts[r.data["v"]] += 1
    # every sample kept ~30 times (10/100 x 300); early and late samples alike
    assert counts.min() > 10 and counts.max() < 60
    assert abs(counts[:50].sum() - counts[50:].sum()) < 300


def test_forward_flops_counts_conv_and_linear():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5))
    f = forward_flops(net, torch.zeros(2, 3, 8, 8))
    assert f == 2 * (4 * 8 * 8) * (3 * 3 * 3) + 2 * 5 * 4


def test_lightcl_sparse_round_channels_is_its_own_cached_export(digits_ckpt):
    """The suite's ``round_channels`` option reaches the export (counts are multiples of it, recorded in meta),
    is part of the cache key (the authors' counts are a different export), and a cached export is reused."""
    from lightcl.bench.methods.lightcl_sparse import ensure_sparse_export
    from lightcl.engine.export_dir import load_export_meta

    rounded = ensure_sparse_export(digits_ckpt, "layer3", "authors", 0, round_channels=8)
    sp = load_export_meta(rounded)["sparsity"]
    assert sp["round_channels"] == 8
    assert all(int(k) % 8 == 0 for k in _kept_counts(sp))
    stamp = (rounded / "meta.json").stat().st_mtime_ns
    assert ensure_sparse_export(digits_ckpt, "layer3", "authors", 0, round_channels=8) == rounded
    assert (rounded / "meta.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    plain = ensure_sparse_export(digits_ckpt, "layer3", "authors", 0)
    assert plain != rounded and load_export_meta(plain)["sparsity"]["round_channels"] is None


def _kept_counts(sp: dict) -> list:
    """meta.json["sparsity"]["groups"]: {group: [kept, total]}."""
    out = [kept for kept, _total in sp["groups"].values()]
    assert out
    return out


@pytest.mark.parametrize("name", ["lightcl-replay", "lightcl-replay-free"])
def test_replay_steps_are_counted_as_trained_head_samples(setting, name):
    """Each extra replay update trains the head on ``replay_batch`` samples: the cost ledger charges exactly
    that much more than the same stream with ``replay_steps`` 0 (the task-free method undercounted it)."""
    s, data, ctx = setting
    flops = {}
    for k in (0, 2):
        m = create_method(name, ctx(), replay_budget="64KiB", replay_steps=k)
        _run(m, data, tasks=2, steps=2)
        flops[k] = m.flops
        updates = m.learner.counters.get("replay_updates", 0)
    assert updates > 0
    assert flops[2] - flops[0] == pytest.approx(3.0 * m.part_flops["head"] * m.learner.replay.batch_size * updates)
