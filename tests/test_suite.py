"""``lightcl bench --suite``: records, files, report, plots, subprocess isolation, helpful errors."""
from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _seed_cache(digits_ckpt: Path, digits_export: Path) -> None:
    """Put the session's digits backbone/export where the smoke scenario looks (no re-pretraining).

    The smoke scenario's backbone is the same recipe as the ``digits_ckpt`` fixture
    (resnet18 width 16, digits, 3 epochs, seed 0)."""
    from lightcl.bench.pipeline import backbone_path
    from lightcl.bench.scenarios import get_scenario
    from lightcl.engine.paths import cache_dir

    dest = backbone_path(get_scenario("smoke"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    for ext in (".safetensors", ".json"):
        shutil.copy(digits_ckpt.with_name(digits_ckpt.name + ext), dest.with_name(dest.name + ext))
    exp = cache_dir() / "exports" / f"{dest.name}-layer3"
    shutil.copytree(digits_export, exp)


@pytest.fixture
def smoke_results(digits_ckpt, digits_export, tmp_path):
    from lightcl.bench.suite import run_suite

    _seed_cache(digits_ckpt, digits_export)
    out = tmp_path / "suite"
    res = run_suite("smoke", out, methods="sgd,lightcl,lightcl-sparse", seeds=1, progress=False, command="CMD",
                    echo=lambda s: None)
    return out, res


def test_smoke_suite_writes_everything(smoke_results):
    out, res = smoke_results
    recs = res["records"]
    assert [(r["method"], r["seed"]) for r in recs] == [("sgd", 0), ("lightcl", 0), ("lightcl-sparse", 0)]
    assert all(r["status"] == "ok" for r in recs)
    assert res["skipped"] == []
    for r in recs:
        assert len(r["til"]) == len(r["cil"]) == 5 and [len(row) for row in r["cil"]] == [1, 2, 3, 4, 5]
        for k in ("final_til", "final_cil", "forgetting_til", "forgetting_cil", "bwt_til", "bwt_cil",
                  "theoretical_mib", "peak_rss_delta_mib", "idle_rss_mib", "train_flops", "step_ms", "wall_s"):
            assert isinstance(r[k], (int, float)), k
        assert r["peak_rss_delta_mib"] > 0 and r["theoretical_mib"] > 0 and r["train_flops"] > 0
        assert r["epochs"] == 1 and r["steps"] == res["steps_per_run"]
        assert r["config"]["source"] and r["hyperparameters"]
    by = {(r["method"], r["seed"]): r for r in recs}
    # the engine trains less and holds no gradients for the frozen part
    assert by[("lightcl", 0)]["theoretical_mib"] < by[("sgd", 0)]["theoretical_mib"]
    assert by[("lightcl", 0)]["train_flops"] < by[("sgd", 0)]["train_flops"]
    # the physically pruned export: smaller in theory and in FLOPs than the dense engine
    assert by[("lightcl-sparse", 0)]["theoretical_mib"] < 0.5 * by[("lightcl", 0)]["theoretical_mib"]
    assert by[("lightcl-sparse", 0)]["train_flops"] < 0.5 * by[("lightcl", 0)]["train_flops"]
    assert by[("lightcl-sparse", 0)]["final_til"] > 0.6

    data = json.loads((out / "results.json").read_text())
    assert data["records"] and data["env"]["torch"] and data["command"] == "CMD"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 3 and {"method", "seed", "final_cil", "peak_rss_delta_mib", "train_flops"} <= set(rows[0])
    md = (out / "report.md").read_text()
    assert "| `sgd` |" in md and "| `lightcl` |" in md and "±" in md and "CMD" in md
    assert "| `lightcl-sparse` |" in md
    assert "The paper's Table 1" in md
    for png in ("heatmaps.png", "accuracy_vs_memory.png", "curves.png", "task_curves.png"):
        p = out / png
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size < 300_000
        assert f"]({png})" in md
    assert (out / "logs" / "sgd-seed0.log").is_file()


def test_same_seed_same_result(digits_ckpt, digits_export):
    """The data order is the seed's alone: a worker re-run reproduces the accuracy matrix."""
    from dataclasses import replace

    from lightcl.bench.scenarios import get_scenario
    from lightcl.bench.suite import _frozen_figures, load_config, run_one

    s = replace(get_scenario("smoke", epochs=1), n_tasks=2)
    spec = {"method": "lightcl", "seed": 1, "scenario": s.to_dict(), "ckpt": str(digits_ckpt),
            "export_dir": str(digits_export), "hyperparameters": load_config("lightcl", "smoke")["hyperparameters"],
            "threads": 1, "frozen": _frozen_figures(str(digits_ckpt), "layer3", (3, 32, 32))}
    a, b = run_one(spec), run_one(spec)
    assert a["cil"] == b["cil"] and a["til"] == b["til"]


def test_report_beside_paper_table_for_paper_suites():
    from lightcl.bench.report import main_table

    rec = {"method": "er", "seed": 0, "status": "ok", "final_cil": 0.5, "final_til": 0.9, "theoretical_mib": 10.0,
           "peak_rss_delta_mib": 20.0, "train_flops": 1e12, "step_ms": 5.0, "wall_s": 3.0,
           "describe": {"trains": "whole model"}, "til": [[0.9]], "cil": [[0.5]]}
    md = main_table({"records": [rec, {**rec, "seed": 1, "final_cil": 0.7}], "methods": ["er"], "paper_suite": True})
    assert "paper CIL" in md and "54.44" in md and "185.4" in md
    assert "60.00 ± 14.14" in md  # mean ± sample std over seeds


def _dead_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def test_paper_suite_without_dataset_is_one_helpful_line(tmp_path):
    sock, port = _dead_port()
    try:
        env = {**__import__("os").environ, "LIGHTCL_CACHE": str(tmp_path / "cache"),
               "LIGHTCL_DATA_MIRROR": f"http://127.0.0.1:{port}/"}
        r = subprocess.run([sys.executable, "-m", "lightcl", "bench", "--suite", "paper-cifar10", "--out",
                            str(tmp_path / "o")], capture_output=True, text=True, timeout=120, env=env)
    finally:
        sock.close()
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(err) == 1 and "cifar10" in err[0] and "not found" in err[0]
    assert not (tmp_path / "o" / "results.json").exists()


def test_bench_suite_bad_method_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lightcl", "bench", "--suite", "smoke", "--methods", "nope", "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "unknown method" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- the worker harness (bench/worker.py)
# targets run in a fresh interpreter: they live here, found through PYTHONPATH
_HERE = {"PYTHONPATH": str(Path(__file__).resolve().parent)}


def _target_counts(spec, progress):
    for _ in range(spec["n"]):
        progress(1)
    print("a stray stdout line")
    return {"n": spec["n"], "pid": __import__("os").getpid()}


def _target_fails(spec):
    import sys as _sys

    if spec["kind"] == "input":
        from lightcl.engine.errors import InputError

        raise InputError("the spec is bad")
    print("working ...", file=_sys.stderr)
    raise ValueError("boom")


def _target_hangs(spec):
    import os as _os
    import signal as _signal
    import time as _time

    if spec.get("ignore_term"):
        _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
    Path(spec["pid_file"]).write_text(str(_os.getpid()))
    _time.sleep(120)
    return {}


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_worker_streams_progress_and_returns_the_result(tmp_path):
    import os

    from lightcl.bench.worker import run_worker

    ticks: list[int] = []
    out = run_worker("test_suite:_target_counts", {"n": 3}, env=_HERE, on_progress=ticks.append,
                     log_path=tmp_path / "w.log")
    assert out.ok and out.error is None and out.returncode == 0
    assert out.result["n"] == 3 and out.result["pid"] != os.getpid()  # a fresh interpreter
    assert ticks == [1, 1, 1]
    assert "a stray stdout line" in (tmp_path / "w.log").read_text()  # not a progress line: logged


def test_worker_failure_is_one_line_with_the_last_stderr_lines():
    from lightcl.bench.worker import WorkerError, run_worker
    from lightcl.engine.errors import LightCLError

    out = run_worker("test_suite:_target_fails", {"kind": "crash"}, env=_HERE)
    assert not out.ok and out.returncode == 1 and out.error == "ValueError: boom"
    assert "working ..." in out.tail and "Traceback (most recent call last):" in out.tail
    with pytest.raises(WorkerError, match=r"^update mode x failed \(exit 1\): .*ValueError: boom$") as e:
        out.raise_for_error("update mode x")
    assert isinstance(e.value, LightCLError) and "\n" not in str(e.value)
    lc = run_worker("test_suite:_target_fails", {"kind": "input"}, env=_HERE)
    assert lc.error == "InputError: the spec is bad" and lc.tail == ["InputError: the spec is bad"]


@pytest.mark.parametrize("ignore_term", [False, True])
def test_worker_timeout_stops_the_child(tmp_path, ignore_term):
    """A timeout ends the child: SIGTERM, and SIGKILL when it ignores SIGTERM; nothing is left running."""
    import time

    from lightcl.bench.worker import run_worker

    pid_file = tmp_path / "pid"
    t0 = time.monotonic()
    out = run_worker("test_suite:_target_hangs", {"pid_file": str(pid_file), "ignore_term": ignore_term},
                     env=_HERE, timeout=8, term_grace=1)
    assert out.timed_out and not out.ok and out.error == "timed out after 8 s"
    assert time.monotonic() - t0 < 30
    assert not _alive(int(pid_file.read_text()))
    assert out.returncode == (-9 if ignore_term else -15)


def test_engine_methods_get_a_fresh_batch_at_end_task(digits_ckpt, digits_export):
    """The suite hands a freshly drawn full batch to methods whose end_task takes one (as `lightcl learn`),
    from a generator of its own: the shared data order is untouched."""
    import torch

    from lightcl.bench.methods import create_method
    from lightcl.bench.methods.base import MethodContext
    from lightcl.bench.scenarios import get_scenario
    from lightcl.bench.methods import method_class
    from lightcl.bench.suite import fresh_generator

    s = get_scenario("smoke", epochs=1)
    ctx = MethodContext(scenario=s, ckpt=str(digits_ckpt), export_dir=str(digits_export), num_classes=10, threads=1)
    # declared on the class (the suite reads the flag; it no longer inspects end_task's signature)
    assert create_method("lightcl", ctx).wants_fresh_batch and method_class("lightcl-reference").wants_fresh_batch
    assert method_class("lightcl-sparse").wants_fresh_batch
    assert not create_method("sgd", ctx, lr=0.1).wants_fresh_batch
    data_gen = torch.Generator().manual_seed(0)  # the run's data order (run_one)
    assert not torch.equal(torch.randperm(50, generator=fresh_generator(0)), torch.randperm(50, generator=data_gen))


def test_report_says_how_runs_shared_the_machine_and_what_a_resume_kept(smoke_results):
    """A Ray suite ran runs side by side and a resumed one timed only its own pass: the setting lines say so,
    since both decide whether the report's step and wall times compare with another report's."""
    from lightcl.bench.report import _setting

    _, res = smoke_results
    local = "\n".join(_setting(res))
    assert "one run at a time" in local and "earlier pass" not in local
    ray = dict(res, executor={"name": "ray", "address": None, "resumed": 2})
    text = "\n".join(_setting(ray))
    assert "in parallel as Ray tasks" in text and "one run at a time" not in text
    assert "2 run(s) were finished by an earlier pass" in text
