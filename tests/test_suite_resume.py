"""A suite killed with SIGKILL and restarted runs only what had not finished (records on disk)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_suite import _seed_cache
from test_suite_records import ok_record


# two cheap methods (the frozen part runs in onnxruntime; only the head trains), 1 epoch per task
def _suite_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "lightcl", "bench", "--suite", "smoke", "--methods", "lightcl,latent-replay",
            "--out", str(out), "--no-plots", "--quiet"]


def test_sigkill_then_restart_runs_only_the_unfinished(digits_ckpt, digits_export, tmp_path):
    _seed_cache(digits_ckpt, digits_export)
    out = tmp_path / "suite"
    first_rec, second_rec = out / "records" / "lightcl-seed0.json", out / "records" / "latent-replay-seed0.json"
    # the first suite: killed (whole process group, the running worker too) as soon as the first record lands
    proc = subprocess.Popen(_suite_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 180
        while not first_rec.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the first run never finished"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not second_rec.exists()  # the second was still running (a worker takes seconds)
    first = first_rec.read_bytes()
    assert json.loads(first)["status"] == "ok"
    assert not list((out / "records").glob("*.tmp*"))  # the kill left no half-written record

    r = subprocess.run(_suite_cmd(out), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    said = r.stdout + r.stderr
    assert "resuming: 1 of 2 run(s) already finished" in said and "running the other 1" in said
    assert "latent-replay seed 0: CIL" in said and "\nlightcl seed 0: CIL" not in said  # not run again
    assert first_rec.read_bytes() == first
    res = json.loads((out / "results.json").read_text())
    assert [(x["method"], x["status"]) for x in res["records"]] == [("lightcl", "ok"), ("latent-replay", "ok")]
    assert res["executor"]["resumed"] == 1
    assert json.loads(first) == res["records"][0]


def test_a_record_is_reused_only_for_the_same_run(tmp_path):
    from lightcl.bench.suite import load_finished, record_path, run_key
    from lightcl.engine.fileio import write_json_atomic

    spec = {"method": "sgd", "seed": 0, "scenario": {"epochs": 1}, "hyperparameters": {"lr": 0.1}}
    path = record_path(tmp_path, "sgd", 0)
    write_json_atomic(path, ok_record(spec, run_key(spec)))
    assert load_finished(tmp_path, spec)["final_cil"] == 0.5
    assert load_finished(tmp_path, {**spec, "scenario": {"epochs": 2}}) is None  # other settings: run again
    assert load_finished(tmp_path, {**spec, "seed": 1}) is None
    write_json_atomic(path, {"status": "failed", "run_key": run_key(spec)})
    assert load_finished(tmp_path, spec) is None  # a failed run is retried
    path.write_text("{not json")
    assert load_finished(tmp_path, spec) is None
