"""`lightcl bench latency`: runs each configuration in a subprocess, prints a table, writes valid JSON."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

from lightcl.bench.latency import _add_ratios, format_table  # noqa: E402

KEYS = ["backend", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "images_per_s", "session_create_ms",
        "first_run_ms", "peak_rss_mib"]


@pytest.fixture(scope="module")
def export_dir(digits_ckpt, tmp_path_factory):
    from lightcl.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("lat") / "exp"
    export_checkpoint(digits_ckpt, out, split="layer3", profile="jetson-nano", progress=False)
    return out


def test_latency_cli_writes_json(export_dir, tmp_path, capsys):
    from lightcl.cli import main

    out = tmp_path / "lat.json"
    rc = main(["bench", "latency", str(export_dir), "--backend", "torch,ort", "--batch", "2", "--iters", "3",
               "--threads", "1", "--json", str(out), "--quiet"])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    report = json.loads(out.read_text())
    assert {"results", "env"} <= set(report)
    assert [(r["backend"], r["batch"]) for r in report["results"]] == [("torch", 2), ("ort", 2)]
    for r in report["results"]:
        for k in KEYS:
            assert k in r, k
        assert r["iters"] == 3 and r["threads"] == 1
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["images_per_s"] > 0 and r["peak_rss_mib"] > 10 and r["first_run_ms"] > 0
    assert report["results"][1]["provider"] == "CPUExecutionProvider"
    assert "p50_vs_torch" in report["results"][1]
    assert report["env"]["threads"] == 1 and report["env"]["torch"]
    assert "p50 ms" in stdout and "ort" in stdout


def test_latency_refuses_unknown_backend_and_missing_int8(export_dir, capsys):
    from lightcl.cli import main

    assert main(["bench", "latency", str(export_dir), "--backend", "magic", "--iters", "1"]) == 1
    assert "unknown backend" in capsys.readouterr().err
    assert main(["bench", "latency", str(export_dir), "--backend", "ort-int8", "--iters", "1"]) == 1
    assert "--int8" in capsys.readouterr().err


def test_table_and_ratios():
    res = [{"backend": "torch", "batch": 1, "p50_ms": 2.0, "p90_ms": 2.0, "p99_ms": 2.0, "mean_ms": 2.0,
            "images_per_s": 500.0, "session_create_ms": 1.0, "first_run_ms": 3.0, "peak_rss_mib": 100.0},
           {"backend": "ort", "batch": 1, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0,
            "images_per_s": 1000.0, "session_create_ms": 1.0, "first_run_ms": 3.0, "peak_rss_mib": 100.0},
           {"backend": "ort-int8", "batch": 1, "p50_ms": 0.5, "p90_ms": 0.5, "p99_ms": 0.5, "mean_ms": 0.5,
            "images_per_s": 2000.0, "session_create_ms": 1.0, "first_run_ms": 3.0, "peak_rss_mib": 100.0},
           {"backend": "tensorrt", "batch": 1, "error": "MissingDependencyError: no tensorrt"}]
    _add_ratios(res)
    assert res[1]["p50_vs_torch"] == 0.5 and res[2]["p50_vs_ort_fp32"] == 0.5
    table = format_table({"results": res, "env": {"threads": 2}})
    assert "0.50x" in table and "error: MissingDependencyError" in table


def test_several_exports_in_one_run_ratios_and_table():
    row = {"p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0, "images_per_s": 1.0, "session_create_ms": 1.0,
           "first_run_ms": 1.0, "peak_rss_mib": 1.0}
    res = [{**row, "backend": "ort", "batch": 32, "p50_ms": 4.0, "export": "dense", "export_index": 0},
           {**row, "backend": "ort", "batch": 32, "p50_ms": 1.0, "export": "sparse", "export_index": 1},
           {**row, "backend": "ort-int8", "batch": 32, "p50_ms": 2.0, "export": "dense", "export_index": 0},
           {**row, "backend": "ort-int8", "batch": 32, "p50_ms": 0.5, "export": "sparse", "export_index": 1}]
    _add_ratios(res)
    assert res[1]["p50_vs_first_export"] == 0.25 and "p50_vs_first_export" not in res[0]
    assert res[3]["p50_vs_ort_fp32"] == 0.5 and res[3]["p50_vs_first_export"] == 0.25  # int8 vs its own fp32
    table = format_table({"results": res, "env": {"threads": 2}})
    assert "sparse / dense p50 at ort batch 32: 0.25x" in table and "sparse: ort-int8 / ort fp32" in table


def test_latency_cli_two_exports_interleaved(export_dir, tmp_path, capsys):
    from lightcl.cli import main

    out = tmp_path / "two.json"
    rc = main(["bench", "latency", str(export_dir), str(export_dir), "--backend", "ort", "--batch", "1",
               "--iters", "2", "--threads", "1", "--json", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr()
    rep = json.loads(out.read_text())
    assert [(r["batch"], r["export_index"]) for r in rep["results"]] == [(1, 0), (1, 1)]
    assert all(r["p50_vs_first_export"] > 0 for r in rep["results"] if r["export_index"] == 1)
    assert rep["config"]["compare"] == [str(export_dir)]
