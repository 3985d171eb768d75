"""The learner's state lives in its objects: state_dict()/load_state_dict() on LightCL, its memory and its
optimizer; engine/state.py only writes and reads the directory (format 2, format 1 still read)."""
from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from lightcl.engine.errors import InputError, IntegrityError, StateError
from lightcl.engine.head import Head
from lightcl.engine.learner import LightCL
from lightcl.engine.losses import LossComponent
from lightcl.engine.optim import PerParameterSGD

DATA = Path(__file__).parent / "data"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_state_v1", DATA / "make_state_v1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


V1 = _fixture_module()


def _learner(**options) -> LightCL:
    torch.manual_seed(0)
    return LightCL(V1.PoolExtractor(), Head(V1.HEAD_CONFIG), **{**V1.OPTIONS, **options})


def _train_into_task_1(lr: LightCL) -> LightCL:
    """The fixture's history, run with today's code."""
    lr.begin_task(0, [0, 1])
    for x, y in V1.batches(1, [0, 1], 3):
        lr.observe(x, y)
    lr.end_task(V1.batches(2, [0, 1], 1)[0][0])
    x, y = V1.batches(3, [2, 3], 1)[0]
    lr.begin_task(1, [2, 3], x, y)
    for x, y in V1.batches(4, [2, 3], 2):
        lr.observe(x, y)
    return lr


def _resign(d: Path, edit) -> None:
    from lightcl.engine.state import SELF_KEY, _doc_digest

    doc = json.loads((d / "state.json").read_text())
    edit(doc)
    doc[SELF_KEY] = _doc_digest(doc)
    (d / "state.json").write_text(json.dumps(doc))


@pytest.fixture()
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fixture was made: float sums in one order
    yield
    torch.set_num_threads(n)


def _same_continuation(got: dict, want: dict) -> None:
    assert got["masks"] == want["masks"] and got["evaluate"] == want["evaluate"]
    assert len(got["steps"]) == len(want["steps"])
    for g, w in zip(got["steps"], want["steps"]):
        assert g.keys() == w.keys() and g["skipped"] == w["skipped"] == 0
        assert all(g[k] == pytest.approx(w[k], rel=1e-6, abs=0) for k in ("loss", "ce", "feature_pattern")), (g, w)


def test_format_1_state_loads_bit_for_bit_and_continues_as_main_did(tmp_path, one_thread):
    """tests/data/state_v1 was written by main at 13d5dc5; the expected file is what main computed next."""
    from safetensors.torch import load_file

    expected = json.loads((DATA / "state_v1.expected.json").read_text())
    d = tmp_path / "v1"
    shutil.copytree(DATA / "state_v1", d)
    doc = json.loads((d / "state.json").read_text())
    assert doc["format"] == "lightcl-state/1"
    lr = LightCL.load(d, V1.PoolExtractor())
    sd = lr.state_dict()
    raw = load_file(d / "learner.safetensors")
    params = list(lr.head.parameters())
    momentum = {int(k.split(".")[1]): v for k, v in raw.items() if k.startswith("optim.")}
    assert len(momentum) == len(params)
    for i, v in momentum.items():
        assert torch.equal(lr.optimizer.state[params[i]]["momentum_buffer"], v), i
    for k, v in raw.items():
        if k.startswith(("buffer.", "target.", "mask.")):
            assert torch.equal(sd["memory"][k], v), k
    assert torch.equal(sd["rng"], raw["rng.generator"]) and torch.equal(sd["last_features"], raw["task.last_features"])
    for k, v in load_file(d / "head.safetensors").items():
        assert torch.equal(sd["head"][k], v), k
    assert (sd["tasks"], sd["class_index"], sd["current_task"], sd["finished_tasks"], sd["counters"], sd["memory"]["seen"]) \
        == (doc["tasks"], doc["class_index"], doc["current_task"], doc["finished_tasks"], doc["counters"], doc["memory_seen"])
    got = V1.continuation(lr)
    _same_continuation(got, expected)
    if got["head_sha256"] == expected["head_sha256"]:  # the machine that made the fixture: bit for bit
        assert got == expected
    # saved again it is format 2, and continues exactly as the format-1 load did
    LightCL.load(d, V1.PoolExtractor()).save(tmp_path / "v2")
    assert json.loads((tmp_path / "v2" / "state.json").read_text())["format"] == "lightcl-state/3"
    assert V1.continuation(LightCL.load(tmp_path / "v2", V1.PoolExtractor())) == got


def test_future_format_is_refused_in_one_line(tmp_path):
    _learner().save(tmp_path / "s")
    _resign(tmp_path / "s", lambda d: d.update(format="lightcl-state/4"))
    with pytest.raises(StateError, match="newer lightcl") as e:
        LightCL.load(tmp_path / "s", V1.PoolExtractor())
    assert "\n" not in str(e.value)


def test_state_dict_round_trip_in_memory_grows_an_expandable_classifier():
    a = _train_into_task_1(_learner(num_classes=None, buffer_policy="reservoir"))
    b = _learner(num_classes=None, buffer_policy="reservoir")
    assert b.head.num_classes < a.head.num_classes
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.head.num_classes == a.head.num_classes and b.memory.seen == a.memory.seen > 0
    for x, y in V1.batches(11, [2, 3], 2):
        sa, sb = a.observe(x, y), b.observe(x, y)
        assert {k: v for k, v in sa.items() if k != "step_ms"} == {k: v for k, v in sb.items() if k != "step_ms"}
    for k, v in a.head.state_dict().items():
        assert torch.equal(v, b.head.state_dict()[k]), k
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_bad_state_dict_changes_nothing():
    a = _train_into_task_1(_learner())
    b = _train_into_task_1(_learner(seed=4))
    before = copy.deepcopy(b.state_dict())
    bad = copy.deepcopy(a.state_dict())
    p0 = next(iter(bad["optimizer"]["state"]))
    bad["optimizer"]["state"][p0]["momentum_buffer"] = torch.zeros(3)
    with pytest.raises(IntegrityError, match="momentum_buffer"):
        b.load_state_dict(bad)
    bad = copy.deepcopy(a.state_dict())
    bad["memory"]["mask.layer4.0"] = torch.full((8,), 7, dtype=torch.uint8)
    with pytest.raises(IntegrityError, match="mask"):
        b.load_state_dict(bad)
    with pytest.raises(IntegrityError, match="other options"):
        _learner(lr=0.5).load_state_dict(a.state_dict())
    after = b.state_dict()
    assert json.dumps({k: v for k, v in before.items() if k in ("tasks", "counters", "config")}) == \
        json.dumps({k: v for k, v in after.items() if k in ("tasks", "counters", "config")})
    for k, v in before["head"].items():
        assert torch.equal(v, after["head"][k]), k
    assert torch.equal(before["rng"], after["rng"])


def test_any_torch_optimizer_round_trips(tmp_path):
    def adam(params):
        return torch.optim.Adam(params, lr=1e-3, betas=(0.8, 0.99))

    a = _train_into_task_1(_learner(optimizer=adam))
    assert isinstance(a.optimizer, torch.optim.Adam) and a.optimizer.state
    a.save(tmp_path / "s")
    b = LightCL.load(tmp_path / "s", V1.PoolExtractor(), optimizer=adam)
    assert b.optimizer.param_groups[0]["betas"] == [0.8, 0.99] or tuple(b.optimizer.param_groups[0]["betas"]) == (0.8, 0.99)
    for x, y in V1.batches(11, [2, 3], 2):
        assert a.observe(x, y)["loss"] == b.observe(x, y)["loss"]
    for k, v in a.head.state_dict().items():
        assert torch.equal(v, b.head.state_dict()[k]), k
    with pytest.raises(InputError, match="optimizer Adam"):
        LightCL.load(tmp_path / "s", V1.PoolExtractor())


class OldLogitsL2(LossComponent):
    """docs/learner.md's example: an L2 pull of the other classes' logits towards zero on the batch."""

    name = "old_logits_l2"

    def __call__(self, ctx):
        old = [c for c in range(ctx.logits.shape[1]) if c not in ctx.columns]
        return ctx.logits[:, old].pow(2).mean() if old else ctx.logits.new_zeros(())


def test_custom_loss_component_changes_the_loss_and_is_reported(tmp_path):
    x, y = V1.batches(11, [2, 3], 1)[0]
    ref = _train_into_task_1(_learner()).observe(x, y)
    lr = _train_into_task_1(_learner(loss_components=[OldLogitsL2(weight=0.5)]))
    out = lr.observe(x, y)
    assert set(out) == {"loss", "ce", "feature_pattern", "old_logits_l2", "skipped", "step_ms"}
    assert out["old_logits_l2"] > 0
    assert out["loss"] == pytest.approx(out["ce"] + out["feature_pattern"] + 0.5 * out["old_logits_l2"], rel=1e-6)
    assert out["ce"] != ref["ce"]  # the term took part in training before this step
    zero = _train_into_task_1(_learner(loss_components=[OldLogitsL2(weight=0.0)])).observe(x, y)
    assert zero["loss"] == ref["loss"] and zero["old_logits_l2"] > 0  # weight 0: reported, not trained on
    assert lr.state_dict()["loss_components"] == [["ce", 1.0], ["feature_pattern", 1.0], ["old_logits_l2", 0.5]]
    lr.save(tmp_path / "s")
    with pytest.raises(InputError, match="loss components"):
        LightCL.load(tmp_path / "s", V1.PoolExtractor())
    again = LightCL.load(tmp_path / "s", V1.PoolExtractor(), loss_components=[OldLogitsL2(weight=0.5)])
    assert again.observe(x, y)["loss"] == lr.observe(x, y)["loss"]
    with pytest.raises(InputError, match="distinct"):
        _learner(loss_components=[OldLogitsL2(name="ce")])


def test_class_index_accessors():
    lr = _learner(num_classes=None)
    lr.begin_task(0, [7, 3])
    assert lr.task_columns(0) == [0, 1] and lr.seen_columns() == [0, 1]
    assert lr.label_index(torch.tensor([3, 7, 3])).tolist() == [1, 0, 1]
    assert lr.label_index([7]).tolist() == [0]
    with pytest.raises(InputError, match="no announced task"):
        lr.label_index([5])


def test_per_parameter_sgd_state_dict_is_torch_sgds():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    ref = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    mine = PerParameterSGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x = torch.randn(5, 4)
    for m, o in ((a, ref), (b, mine)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    sr, sm = ref.state_dict(), mine.state_dict()
    assert sr["param_groups"] == sm["param_groups"]
    assert sr["state"].keys() == sm["state"].keys()
    for i in sr["state"]:
        assert torch.equal(sr["state"][i]["momentum_buffer"], sm["state"][i]["momentum_buffer"])
    # either loads the other's, and the next step agrees
    c = torch.nn.Linear(4, 3)
    c.load_state_dict(b.state_dict())
    cross = PerParameterSGD(c.parameters(), lr=0.5)
    cross.load_state_dict(copy.deepcopy(sr))
    back = torch.optim.SGD(a.parameters(), lr=0.5)
    back.load_state_dict(copy.deepcopy(sm))
    for m, o in ((a, back), (c, cross)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    assert torch.equal(a.weight, c.weight) and torch.equal(a.bias, c.bias)
    with pytest.raises(ValueError):
        cross.load_state_dict({"state": {0: {"momentum_buffer": torch.zeros(2)}}, "param_groups": sr["param_groups"]})


def test_state_module_reads_no_private_field():
    src = (Path(__file__).parents[1] / "engine" / "state.py").read_text()
    assert not re.findall(r"learner\._\w+", src)
