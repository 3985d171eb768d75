"""The method template (bench/methods/base.py): final contract, one class map, the Step -> FLOPs ledger, the
registry; the FLOPs a few methods count, pinned from the code before the template; and the example method of
docs/extending.md, run from the page itself."""
from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from lightcl.bench.methods import REGISTRY, create_method, method_class
from lightcl.bench.methods.base import Batch, Method, MethodContext, Step, register_method
from lightcl.engine.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class _ToyConfig:
    lr: float = 0.1


class _Toy(Method):
    """A method with no model: one linear part, reports what the test tells it to."""

    name = "toy-template"
    summary = "test only"
    config_class = _ToyConfig
    wants_ids = False

    def __init__(self, ctx, **hp):
        super().__init__(ctx, **hp)
        self.lin = nn.Linear(3, 2)
        self.declare_part("lin", self.lin, (3,))  # 2 * 2 * 3 = 12 FLOPs per sample
        self.seen: list[Batch] = []
        self.next: Step = Step({"loss": 0.0}, trained={"lin": 5}, forwarded={"lin": 2})
        self.ended_with = "not yet"

    def train_step(self, batch):
        self.seen.append(batch)
        return self.next

    def on_end_task(self, x):
        self.ended_with = x

    def logits(self, x):
        return torch.zeros(len(x), self.ctx.num_classes)

    def accounting(self):
        return {}


def _ctx(n=4):
    return MethodContext(scenario=None, ckpt=None, export_dir=None, num_classes=n, input_shape=(1, 4, 4))


def test_the_public_contract_is_final():
    for hook in ("observe", "begin_task", "end_task", "to_index"):
        with pytest.raises(TypeError, match=f"overrides {hook}"):
            type("Bad", (Method,), {hook: lambda self, *a: None})


def test_register_needs_a_name_a_summary_a_config_and_a_free_name():
    with pytest.raises(TypeError, match="declare summary, config_class"):
        register_method(type("NoDecl", (Method,), {"name": "x-undeclared"}))
    with pytest.raises(TypeError, match="taken by"):
        register_method(type("Dup", (Method,), {"name": "sgd", "summary": "s", "config_class": _ToyConfig}))
    assert REGISTRY["sgd"] is method_class("sgd")


def test_steps_become_flops_and_labels_go_through_one_map():
    m = _Toy(_ctx())
    assert m.part_flops == {"lin": 12.0}
    m.begin_task(0, ["cup", "ball"])  # string classes: columns in order of arrival
    out = m.observe(torch.zeros(3, 1, 4, 4), ["ball", "cup", "ball"], ids=torch.arange(3))
    assert out == {"loss": 0.0} and m.steps == 1
    assert m.flops == 3 * 12 * 5 + 12 * 2  # trained 3x, forwarded 1x
    b = m.seen[-1]
    assert b.y.tolist() == [1, 0, 1] and b.labels == ["ball", "cup", "ball"] and b.ids is None  # no wants_ids
    m.next = Step({"loss": 1.0}, update=False)  # nothing trained: no step, no FLOPs
    m.observe(torch.zeros(1, 1, 4, 4), ["cup"])
    assert m.steps == 1 and m.flops == 204
    with pytest.raises(InputError, match=r"\['dog'\] name no class"):  # the engine's class map refuses it
        m.observe(torch.zeros(1, 1, 4, 4), ["dog"])
    with pytest.raises(InputError, match="names its classes with strs"):
        m.observe(torch.zeros(1, 1, 4, 4), [3])
    m.next = Step(trained={"nope": 1})
    with pytest.raises(KeyError, match="never declared"):
        m.observe(torch.zeros(1, 1, 4, 4), ["cup"])
    m.end_task(torch.zeros(2, 1, 4, 4))
    assert m.ended_with is None  # a method without wants_fresh_batch gets no batch
    with pytest.raises(InputError, match="no open task"):
        m.end_task()
    m.begin_task(1, ["dog", "cat"])
    assert m.task_indices(1) == [2, 3] and m.seen_indices() == [0, 1, 2, 3]
    assert m.to_index(["cat", "dog", "cup"]).tolist() == [3, 2, 0]
    with pytest.raises(InputError, match="still open"):
        m.begin_task(2, ["owl"])
    m.end_task()
    with pytest.raises(InputError, match="more than 4 classes"):
        m.begin_task(2, ["owl"])
    n = _Toy(_ctx())  # int classes (the suite's): columns in order of arrival, any ids
    n.begin_task(0, [7, 2**40])
    assert n.to_index(torch.tensor([2**40, 7])).tolist() == [1, 0]


# FLOPs after each of 3 steps and each end_task, 3 tasks of the smoke scenario (seed 0, 1 thread), as the
# code counted them before the template (main @ 95277ba, each method hand-writing its ledger), by the same
# loop as _flops_trace below: architecture and sample counts only, so they hold for any weights of the
# width-16 digits backbone.
PINNED = {
    "lwf": [6728957952, 13457915904, 20186873856, 20186873856, 29158817792, 38130761728, 47102705664, 47102705664,
            56074649600, 65046593536, 74018537472, 74018537472],
    "fdr": [6728957952, 13457915904, 20186873856, 21238273536, 31121430528, 41004587520, 50887744512, 51378397696,
            61051274752, 70724151808, 80397028864, 80747495424],
    "lightcl-reference": [3316891648, 6633783296, 9950674944, 12193660928, 18116745216, 22988429824, 27860114432,
                          30103100416, 36026184704, 40897869312, 45769553920, 48012539904],
    "lightcl": [3316891648, 6633783296, 9950674944, 12193660928, 16517339136, 20589320704, 24661302272, 26904288256,
                31227966464, 35299948032, 39371929600, 41614915584],
    "pnn": [6728957952, 13457915904, 20186873856, 20186873856, 34145042432, 48103211008, 62061379584, 62061379584,
            80078749696, 98096119808, 116113489920, 116113489920],
}


@pytest.fixture(scope="module")
def smoke(digits_ckpt, digits_export):
    from lightcl.bench.runner import ScenarioData
    from lightcl.bench.scenarios import get_scenario
    from lightcl.bench.suite import _frozen_figures
    from lightcl.engine.export_dir import load_export_meta

    s = get_scenario("smoke", epochs=1)
    data = ScenarioData(s, load_export_meta(digits_export)["normalization"])
    frozen = _frozen_figures(str(digits_ckpt), s.split, (3, 32, 32))

    def ctx():
        return MethodContext(scenario=s, ckpt=str(digits_ckpt), export_dir=str(digits_export), num_classes=10,
                             seed=0, threads=1, extra=dict(frozen))

    return data, ctx


def _flops_trace(method, data) -> list[float]:
    from lightcl.bench.suite import fresh_generator

    g, fresh, trace = torch.Generator().manual_seed(0), fresh_generator(0), []
    for task in data.tasks[:3]:
        method.begin_task(task.task_id, task.classes, n_train=len(task.train_idx))
        for i, batch in enumerate(data.train_batches(task, g, with_index=method.wants_ids)):
            if i == 3:
                break
            method.observe(*batch)
            trace.append(method.flops)
        method.end_task(data.fresh_batch(task, fresh)[0] if method.wants_fresh_batch else None)
        trace.append(method.flops)
    return trace


@pytest.mark.parametrize("name", sorted(PINNED))
def test_flops_are_the_pre_template_counts(smoke, name):
    from lightcl.bench.suite import load_config

    data, ctx = smoke
    torch.set_num_threads(1)
    m = create_method(name, ctx(), **load_config(name, "smoke")["hyperparameters"])
    assert _flops_trace(m, data) == PINNED[name]
    assert m.steps == 9


def _example_source() -> str:
    text = (ROOT / "docs" / "extending.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class LinearProbe" in b]
    assert len(blocks) == 1, "docs/extending.md's example method is gone"
    return blocks[0]


def test_the_documented_example_method_runs_through_the_template(smoke):
    """docs/extending.md's linear probe, loaded from the page as bench/methods/linear_probe.py would be."""
    data, ctx = smoke
    name = "lightcl.bench.methods.linear_probe"
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "lightcl.bench.methods"
    sys.modules[name] = mod
    try:
        exec(compile(_example_source(), "docs/extending.md", "exec"), mod.__dict__)
        assert method_class("linear-probe") is mod.LinearProbe
        m = create_method("linear-probe", ctx())
        before = {k: v.clone() for k, v in m.net.state_dict().items()}
        trace = _flops_trace(m, data)
        moved = {k for k, v in m.net.state_dict().items() if not torch.equal(v, before[k])}
        assert moved == {"fc.weight", "fc.bias"}
        fc, backbone = m.part_flops["classifier"], m.part_flops["backbone"]
        n0 = len(next(iter(data.train_batches(data.tasks[0], torch.Generator().manual_seed(0))))[0])
        assert trace[0] == (3 * fc + backbone) * n0  # the classifier trained, the backbone only forwarded
        assert backbone + fc == m.part_flops["model"] and m.steps == 9
        assert m.accounting()["trainable"] == sum(p.numel() for p in m.net.fc.parameters())
    finally:
        REGISTRY.pop("linear-probe", None)
        sys.modules.pop(name, None)
