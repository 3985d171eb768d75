"""Issue 11: a second backbone is benchmarkable with no special case. Every registered method either runs the
suite's own loop (:func:`lightcl.bench.suite.run_one`) on a width-16 MobileNetV2 pretrained on digits, or the
suite records it as not applicable with its reason; no method silently changes what it does (SparCL masks
MobileNetV2's declared convs; PNN's columns follow its stages). ResNet-18 behaviour is pinned elsewhere
(tests/test_methods_table1.py, tests/test_faithful.py)."""
from __future__ import annotations

import pytest
import torch

from lightcl.bench.methods import METHODS


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """A real (tiny) MobileNetV2: 1 epoch on 200 digits images, exported at its default split (stage5)."""
    from lightcl.export.onnx_export import export_checkpoint
    from lightcl.export.pretrain import pretrain

    d = tmp_path_factory.mktemp("mbv2")
    pretrain("digits", d / "ckpt", arch="mobilenetv2", width=16, epochs=1, subset=200, seed=0, progress=False)
    export_checkpoint(d / "ckpt", d / "export", progress=False)
    return d / "ckpt", d / "export"


def _scenario():
    from lightcl.bench.scenarios import Scenario

    # smoke-mobilenetv2 cut to 2 tasks x 2 classes (the suite's loop, a few steps per task)
    return Scenario("mbv2-tiny", "digits", "digits", 2, 2, width=16, pretrain_epochs=1, epochs=1,
                    arch="mobilenetv2", augment=False)


def _applicable_split(ckpt):
    from lightcl.bench.suite import _applicable

    skipped: list[dict] = []
    runnable = _applicable(list(METHODS), str(ckpt), skipped, echo=lambda *_: None)
    assert sorted(runnable + [sk["method"] for sk in skipped]) == sorted(METHODS)
    for sk in skipped:  # a reason, naming the backbone, never an empty skip
        assert sk["status"] == "not applicable" and "mobilenetv2" in sk["reason"] and len(sk["reason"]) > 40
    # the structured pruner does not know the inverted residual's channel graph: refused with its reason
    assert [sk["method"] for sk in skipped] == ["lightcl-sparse"]
    assert "conv_bn_act" in skipped[0]["reason"] or "inverted_residual" in skipped[0]["reason"]
    return runnable, skipped


def test_every_method_takes_steps_on_mobilenetv2_or_is_not_applicable(mobilenet, tmp_path, monkeypatch):
    """Fast: every applicable method through the contract (2 tasks x 2 steps, logits, accounting); the
    not-applicable one in the report's table as n/a."""
    from lightcl.bench.methods import create_method
    from lightcl.bench.methods.base import MethodContext
    from lightcl.bench.report import main_table
    from lightcl.bench.runner import ScenarioData
    from lightcl.bench.suite import _frozen_figures, fresh_generator, load_config
    from lightcl.engine.export_dir import load_export_meta

    monkeypatch.setenv("LIGHTCL_CACHE", str(tmp_path / "cache"))
    ckpt, export = mobilenet
    runnable, skipped = _applicable_split(ckpt)
    s = _scenario()
    meta = load_export_meta(export)
    shape = tuple(meta["input_shape"])
    data = ScenarioData(s, meta["normalization"])
    frozen = _frozen_figures(str(ckpt), s.split, shape)
    for m in runnable:
        ctx = MethodContext(scenario=s, ckpt=str(ckpt), export_dir=str(export), num_classes=4, seed=0,
                            input_shape=shape, threads=1, extra=dict(frozen))
        method = create_method(m, ctx, **load_config(m, "smoke-mobilenetv2")["hyperparameters"])
        g, fresh = torch.Generator().manual_seed(0), fresh_generator(0)
        for task in data.tasks:
            method.begin_task(task.task_id, task.classes, n_train=len(task.train_idx))
            for i, batch in enumerate(data.train_batches(task, g, with_index=method.wants_ids)):
                if i == 2:
                    break
                method.observe(*batch)
            if method.wants_fresh_batch:
                method.end_task(data.fresh_batch(task, fresh)[0])
            else:
                method.end_task()
        _task, batches = data.test_stream(2, batch_size=8)[-1]
        x, _ = next(iter(batches))
        out = method.logits(x)
        assert out.shape == (len(x), 4) and torch.isfinite(out).all(), m
        acc = method.accounting()
        assert acc["weights"] > 0 and acc["activations"] > 0 and method.flops > 0, m
    table = main_table({"records": [], "skipped": skipped})
    assert "| `lightcl-sparse` | not applicable (see below) | 0 | n/a |" in table


@pytest.mark.benchmark
def test_every_method_runs_on_mobilenetv2_or_is_not_applicable(mobilenet, tmp_path, monkeypatch):
    from lightcl.bench.report import main_table
    """Slow (~1.5 min CPU): the suite's own loop (run_one: full epochs, evaluation, meters) for every method."""
    from lightcl.bench.suite import _frozen_figures, load_config, run_one

    monkeypatch.setenv("LIGHTCL_CACHE", str(tmp_path / "cache"))
    ckpt, export = mobilenet
    s = _scenario()
    runnable, skipped = _applicable_split(ckpt)
    frozen = _frozen_figures(str(ckpt), s.split, (3, 32, 32))
    records = []
    for m in runnable:
        spec = {"method": m, "seed": 0, "scenario": s.to_dict(), "ckpt": str(ckpt), "export_dir": str(export),
                "hyperparameters": dict(load_config(m, "smoke-mobilenetv2")["hyperparameters"]), "threads": 1,
                "frozen": frozen}
        rec = run_one(spec)
        assert rec["status"] == "ok" and rec["steps"] > 0, m
        assert len(rec["til"]) == 2 and all(0.0 <= a <= 1.0 for row in rec["til"] for a in row), m
        assert rec["theoretical_mib"] > 0 and rec["train_flops"] > 0, m
        assert (rec["final_cil"] is None) == (m == "pnn"), m
        records.append(rec)
    table = main_table({"records": records, "skipped": skipped})
    assert "| `lightcl-sparse` | not applicable (see below) | 0 | n/a |" in table
    assert "`pnn`" in table and "`sparcl-derpp`" in table


def test_sparcl_masks_mobilenetv2s_declared_convs_and_refuses_without_any():
    """SparCL on MobileNetV2 masks the inverted residuals' 1x1 convs (never silently dense); a backbone whose
    blocks declare no maskable weights is refused with one line; ResNet-18 keeps its 16 conv1/conv2 layers."""
    from lightcl.bench.methods.sparcl import not_applicable, prunable
    from lightcl.engine.blocks import ConvBNAct
    from lightcl.export.zoo import Backbone, create_backbone

    r = create_backbone("resnet18", width=16)
    names = [n for n, _ in prunable(r)]
    assert len(names) == 16 and all(n.split(".")[2] in ("conv1", "conv2") for n in names)
    assert not any(n.startswith("blocks.0.") for n in names)  # not the stem, not the shortcuts
    m = create_backbone("mobilenetv2", width=16)
    got = [n for n, _ in prunable(m)]
    assert got and {n.split(".")[2] for n in got} == {"expand_conv", "project_conv"}
    assert not_applicable(m) is None
    plain = Backbone("plain", [("stem", ConvBNAct(3, 8)), ("last", ConvBNAct(8, 16, kernel=1))], feat_dim=16,
                     num_classes=4, width=8, input_size=(3, 32, 32))
    why = not_applicable(plain)
    assert why and "conv_bn_act" in why and "\n" not in why


def test_pnn_columns_follow_the_backbone_stages():
    from lightcl.bench.methods.pnn import STAGES, column_stages
    from lightcl.export.zoo import create_backbone

    r = column_stages(create_backbone("resnet18", width=8))
    assert [s for s, _, _ in r] == list(STAGES) and r[0][1] == 0 and r[-1][2] == 8  # stem joins layer1
    m = create_backbone("mobilenetv2", width=8)
    st = column_stages(m)
    assert [s for s, _, _ in st] == [f"stage{i}" for i in range(1, 8)]
    assert st[0][1] == 0 and st[-1][2] == len(m.block_names) - 1  # stem and last_conv joined, nothing lost
    assert all(a[2] + 1 == b[1] for a, b in zip(st, st[1:]))
