"""The rest of the paper's Table 1 (pnn, fdr, sparcl-er, sparcl-derpp): each method's defining behaviour,
on the real digits data with the width-16 backbone, a few steps each."""
from __future__ import annotations

import pytest
import torch

from lightcl.bench.methods import create_method
from lightcl.bench.methods.base import MethodContext


@pytest.fixture(scope="module")
def setting(digits_ckpt, digits_export):
    from lightcl.bench.runner import ScenarioData
    from lightcl.bench.scenarios import get_scenario
    from lightcl.bench.suite import _frozen_figures
    from lightcl.engine.export_dir import load_export_meta

    s = get_scenario("smoke", epochs=1)
    data = ScenarioData(s, load_export_meta(digits_export)["normalization"])
    frozen = _frozen_figures(str(digits_ckpt), s.split, (3, 32, 32))

    def ctx(seed=0, scenario=s):
        return MethodContext(scenario=scenario, ckpt=str(digits_ckpt), export_dir=str(digits_export), num_classes=10,
                             seed=seed, threads=1, extra=dict(frozen))

    return s, data, ctx


def _hp(name):
    from lightcl.bench.suite import load_config

    return load_config(name, "smoke")["hyperparameters"]


def _train(m, data, task, steps, with_index=False, seed=0):
    m.begin_task(task.task_id, task.classes, n_train=len(task.train_idx))
    g = torch.Generator().manual_seed(seed)
    outs = []
    for i, batch in enumerate(data.train_batches(task, g, with_index=with_index)):
        if i == steps:
            break
        outs.append(m.observe(*batch))
    m.end_task()
    return outs


# --------------------------------------------------------------------------- PNN
def test_pnn_old_column_is_bit_identical_after_a_new_task(setting):
    s, data, ctx = setting
    m = create_method("pnn", ctx(), **_hp("pnn"))
    _train(m, data, data.tasks[0], 3)
    before = m.column_state(0)
    x, _ = next(iter(data.test.batches(data.tasks[0].test_idx, 16, data.pre_eval)))
    lg0 = m.logits(x)[:, m.task_indices(0)]
    _train(m, data, data.tasks[1], 3, seed=1)
    after = m.column_state(0)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights *and* BN statistics
    assert all(not p.requires_grad for p in m.columns[0].parameters())
    # task 0's outputs come from column 0 alone: unchanged by learning task 1
    assert torch.equal(m.logits(x)[:, m.task_indices(0)], lg0)
    # the new column did learn, and has laterals from column 0
    assert len(m.columns) == 2 and m.columns[1].n_old == 1 and "layer2" in m.columns[1].laterals


def test_pnn_memory_grows_with_tasks_and_cil_is_not_applicable(setting):
    s, data, ctx = setting
    m = create_method("pnn", ctx(), **_hp("pnn"))
    assert m.til_only
    _train(m, data, data.tasks[0], 1)
    a1, f0 = m.accounting(), m.flops
    _train(m, data, data.tasks[1], 1, seed=1)
    f1 = m.flops
    _train(m, data, data.tasks[2], 1, seed=2)
    a3 = m.accounting()
    assert a3["columns"] == 3 and a3["weights"] > 3 * a1["weights"] - 1  # three columns + laterals
    assert a3["trainable"] > a1["trainable"]  # the newest column carries laterals from two columns
    assert a3["activations"] > a1["activations"]
    assert f0 < f1 - f0 < m.flops - f1  # one step costs more per task: old columns forward + more laterals
    assert "not applicable" in m.describe()["cil"]


def test_summarize_reports_cil_as_none_for_til_only():
    from lightcl.bench.metrics import summarize

    r = summarize([[0.9], [0.8, 0.7]], None)
    assert r["final_cil"] is None and r["forgetting_cil"] is None and r["bwt_cil"] is None
    assert r["final_til"] == pytest.approx(0.75)


# --------------------------------------------------------------------------- FDR
def test_fdr_penalty_is_zero_on_an_unchanged_model_and_positive_after_change(setting):
    s, data, ctx = setting
    m = create_method("fdr", ctx(), **_hp("fdr"))
    _train(m, data, data.tasks[0], 2)
    assert len(m.buf["x"]) == 15 and (m.buf["task"] == 0).all()
    m.net.eval()
    with torch.no_grad():
        assert float(m.penalty(m.buf)) == pytest.approx(0.0, abs=1e-6)
    out = _train(m, data, data.tasks[1], 3, seed=1)
    assert all("fdr" in o for o in out)  # every step on task 1 regularises on task 0's outputs
    m.net.eval()
    with torch.no_grad():
        sel = m.buf["task"] == 0
        assert float(m.penalty({k: v[sel] for k, v in m.buf.items()})) > 0  # the function moved
    # the buffer is re-balanced: 15 // 2 per task
    assert int((m.buf["task"] == 0).sum()) == 7 and int((m.buf["task"] == 1).sum()) == 7


# --------------------------------------------------------------------------- SparCL
@pytest.mark.parametrize("name", ["sparcl-er", "sparcl-derpp"])
def test_sparcl_masks_reach_the_configured_sparsity(setting, name):
    s, data, ctx = setting
    m = create_method(name, ctx(), **_hp(name))
    assert len(m.params) == 16  # the residual convs of resnet18_0.90.yaml; stem, shortcuts, fc stay dense
    assert m.mask_sparsity() == pytest.approx(0.9, abs=1e-3) and m.weight_sparsity() >= 0.9 - 1e-3
    task = data.tasks[0]
    steps = m.ctx.scenario.epochs * -(-len(task.train_idx) // s.batch_size)
    _train(m, data, task, steps)
    assert m.mask_updates == len(m.update_at) >= 8  # every 0.1 of the task (9 steps: two points share one)
    assert m.phase(max(m.update_at.values())) == 2  # the last update is in the last phase
    # the last phase (lower = upper = 0.9): the mask is the non-zeros of the weights pruned to 0.9; a kept
    # entry that is exactly 0 (grown, never updated) drops out, as in the code: at least 0.9
    assert 0.9 - 1e-3 <= m.mask_sparsity() <= 0.93 and m.weight_sparsity() >= 0.9 - 1e-3
    for n, p in m.params.items():
        assert bool(((p != 0) <= (m.masks[n] != 0)).all())  # no weight outside its mask
    dense = create_method("er" if name == "sparcl-er" else "derpp", ctx(), **_hp("er" if name == "sparcl-er" else "derpp"))
    acc, dacc = m.accounting(), dense.accounting()
    assert acc["weights"] < 0.35 * dacc["weights"] and acc["activations"] == dacc["activations"]
    assert m.part_flops["model"] < 0.5 * dense.part_flops["model"]


def test_sparcl_middle_phase_grows_the_mask(setting):
    """In the middle phase the mask is pruned to 0.91 and regrown at random to 0.90: grown entries start at 0."""
    s, data, ctx = setting
    m = create_method("sparcl-er", ctx(), **_hp("sparcl-er"))
    task = data.tasks[0]
    m.begin_task(task.task_id, task.classes, n_train=len(task.train_idx))
    m.update_masks(0.5)
    assert m.phase(0.5) == 1
    assert m.mask_sparsity() == pytest.approx(0.90, abs=2e-3)
    assert m.weight_sparsity() == pytest.approx(0.91, abs=2e-3)


def test_sparcl_gradient_masking_keeps_the_top_gradients(setting):
    s, data, ctx = setting
    m = create_method("sparcl-er", ctx(), **_hp("sparcl-er"))
    task = data.tasks[0]
    m.begin_task(task.task_id, task.classes, n_train=len(task.train_idx))
    x, y = next(iter(data.train_batches(task, torch.Generator().manual_seed(0))))
    m.net.train()
    loss = m.ce_current(m.net(x), m.to_index(y))
    m.optimizer.zero_grad()
    loss.backward()
    m.task_step = 0  # a sampling step: weight mask, then the top 5% of |grad|
    m.mask_gradients()
    for n, p in m.params.items():
        nz = (p.grad != 0)
        assert bool((nz <= (m.masks[n] != 0)).all())
        assert float(nz.float().mean()) <= 1 - 0.95 + 1e-3
        assert torch.equal(m.grad_masks[n], nz.to(p.dtype))


def test_sparcl_removes_the_least_forgotten_examples(setting):
    """DDR: with 3 epochs, examples never forgotten go first; removed examples are not trained on."""
    from lightcl.bench.scenarios import get_scenario

    s3 = get_scenario("smoke", epochs=3)
    _, data, ctx = setting
    m = create_method("sparcl-er", ctx(scenario=s3), **_hp("sparcl-er"))
    task = data.tasks[0]
    n = len(task.train_idx)
    m.begin_task(task.task_id, task.classes, n_train=n)
    g = torch.Generator().manual_seed(0)
    trained = []
    for _ in range(3):
        for x, y, ids in data.train_batches(task, g, with_index=True):
            out = m.observe(x, y, ids)
            trained.append(out["trained"])
    m.end_task()
    assert len(m.remove_at) == 4
    assert abs(m.removed_total - round(0.3 * n)) <= 4  # 30% of the task, in 4 steps
    assert sum(trained) < 3 * n  # removed examples were skipped


def test_sparcl_remove_data_sorts_by_forgetting_events(setting):
    s, data, ctx = setting
    m = create_method("sparcl-er", ctx(), **_hp("sparcl-er"))
    m.remove_each = 2
    m.stats = {1: [1, 1, 1], 2: [1, 0, 1], 3: [0, 0, 0], 4: [0, 1, 1], 5: [1, 0, 0]}
    assert m.remove_data() == 2
    assert m.removed == {1, 4}  # no forgetting event; 2 and 5 forgot once; 3 never learned
    assert m.stats == {}


# --------------------------------------------------------------------------- report and plots
def _rec(method, seed, cil, til, **kw):
    return {"method": method, "seed": seed, "status": "ok", "final_cil": cil, "final_til": til,
            "forgetting_cil": None if cil is None else 0.1, "forgetting_til": 0.05, "bwt_cil": None if cil is None else -0.1,
            "bwt_til": -0.05, "theoretical_mib": 10.0, "peak_rss_delta_mib": 20.0, "peak_rss_total_delta_mib": 21.0,
            "train_flops": 1e12, "step_ms": 5.0, "wall_s": 3.0, "train_s": 2.0,
            "describe": {"trains": "x"}, "til": [[til], [til, til]], "cil": None if cil is None else [[cil], [cil, cil]],
            "theoretical": {"weights": 1, "trainable": 1, "optimizer_slots": 0, "extra_state": 0, "activations": 1,
                            "buffer": 0, "samples_per_step": 32}, **kw}


@pytest.mark.parametrize("suite,er_paper,pnn_paper", [("paper-cifar10", "54.44", "94.62"),
                                                      ("paper-tinyimg", "11.82", "73.94")])
def test_report_table1_rows_with_pnn_cil_not_applicable(tmp_path, suite, er_paper, pnn_paper):
    from lightcl.bench.report import main_table, report_md, write_all

    recs = [_rec("er", 0, 0.5, 0.9), _rec("pnn", 0, None, 0.95), _rec("pnn", 1, None, 0.93),
            _rec("sparcl-derpp", 0, 0.4, 0.8)]
    res = {"suite": suite, "records": recs, "methods": ["er", "pnn", "sparcl-derpp"], "paper_suite": True,
           "scenario": {"n_tasks": 2, "classes_per_task": 2, "cl_dataset": "d", "batch_size": 32}, "seeds": 2,
           "epochs": 1}
    md = main_table(res)
    pnn = next(ln for ln in md.splitlines() if ln.startswith("| `pnn`"))
    cells = [c.strip() for c in pnn.split("|")]
    assert cells[4] == "n/a" and cells[5] == "94.00 ± 1.41"  # CIL n/a, TIL a number
    assert pnn_paper in pnn and er_paper in md
    sp = next(ln for ln in md.splitlines() if ln.startswith("| `sparcl-derpp`"))
    assert ("35.58" in sp and "140.6" in sp) if suite == "paper-cifar10" else ("9.12" in sp and "536.8" in sp)
    full = report_md(res)
    assert "n/a (task-incremental only)" in full and "nan" not in full.lower()
    paths = write_all(res, tmp_path)  # the plots accept a method without CIL
    assert (tmp_path / "heatmaps.png").stat().st_size > 0 and paths["report"].is_file()
    import csv

    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    assert rows["pnn"]["final_cil"] == "" and float(rows["er"]["final_cil"]) == 0.5


def test_batches_with_index_are_the_same_batches(setting):
    """SparCL's ids ride along without changing the data order any method sees."""
    _, data, _ = setting
    task = data.tasks[1]
    a = list(data.train_batches(task, torch.Generator().manual_seed(5)))
    b = list(data.train_batches(task, torch.Generator().manual_seed(5), with_index=True))
    assert len(a) == len(b)
    for (xa, ya), (xb, yb, ib) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(data.train.y[ib], yb) and set(ib.tolist()) <= set(task.train_idx.tolist())
