"""``--executor ray`` on a real local Ray instance: the same records as the default executor."""
from __future__ import annotations

import json

import pytest

from test_suite import _seed_cache

ray = pytest.importorskip("ray")


def test_ray_executor_gives_the_default_executors_records(digits_ckpt, digits_export, tmp_path):
    from lightcl.bench.suite import run_suite

    _seed_cache(digits_ckpt, digits_export)
    said: list[str] = []
    kw = dict(seeds=1, progress=False, plots=False, echo=said.append)
    via_ray = run_suite("smoke", tmp_path / "ray", methods="sgd,lightcl", executor="ray", **kw)
    assert not ray.is_initialized()  # the local instance it started is gone
    assert any(s.startswith("ray: local instance") for s in said)
    # the default executor on lightcl only, to keep the test cheap (sgd: the same, by the CLI run in
    # docs/benchmarks.md)
    local = run_suite("smoke", tmp_path / "local", methods="lightcl", **kw)
    assert via_ray["executor"]["name"] == "ray" and local["executor"]["name"] == "local"
    assert [(r["method"], r["seed"], r["status"]) for r in via_ray["records"]] == \
        [("sgd", 0, "ok"), ("lightcl", 0, "ok")]
    a, b = via_ray["records"][1], local["records"][0]
    assert a["til"] == b["til"] and a["cil"] == b["cil"]  # same seed, same accuracies
    assert a["steps"] == b["steps"] and a["theoretical_mib"] == b["theoretical_mib"]
    for r in via_ray["records"]:
        assert r["peak_rss_delta_mib"] > 0 and r["node"]  # metered in its own worker process, on a Ray node
    # records and logs land in OUT as on the default executor; the report gathers them
    for m in ("sgd", "lightcl"):
        assert json.loads((tmp_path / "ray" / "records" / f"{m}-seed0.json").read_text())["status"] == "ok"
        assert (tmp_path / "ray" / "logs" / f"{m}-seed0.log").is_file()
    assert "| `lightcl` |" in (tmp_path / "ray" / "report.md").read_text()
    # restarted on Ray: nothing left to run, no Ray instance started
    said.clear()
    again = run_suite("smoke", tmp_path / "ray", methods="sgd,lightcl", executor="ray", **kw)
    assert again["executor"]["resumed"] == 2 and not any(s.startswith("ray:") for s in said)


def test_ray_resources_follow_threads_and_device():
    from lightcl.bench.executors import ray_resources

    assert ray_resources({"threads": 2, "device": "cpu"}) == {"num_cpus": 2, "num_gpus": 0}
    assert ray_resources({"threads": None, "device": "cuda:0"}) == {"num_cpus": 1, "num_gpus": 1}
