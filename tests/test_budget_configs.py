"""The budget sweep must run the committed method with only its budget changed: the configs under
docs/results/replay-budget are what scripts/budget_configs.py derives from bench/configs, byte for byte."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = ("0.25MiB", "1MiB", "4MiB", "16MiB")


def _without(doc: dict, keys: set) -> dict:
    out = {k: v for k, v in doc.items() if k not in keys}
    if "default" in doc:
        out["default"] = _without(doc["default"], keys)
    if "scenarios" in doc:
        out["scenarios"] = {n: _without(e, keys) for n, e in doc["scenarios"].items()}
    return out


def test_derived_configs_change_only_the_budget_and_match_the_committed_ones(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "budget_configs.py"), "--budgets", ",".join(BUDGETS),
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    base = json.loads((ROOT / "bench" / "configs" / "lightcl-replay.json").read_text())
    for b in BUDGETS:
        made = tmp_path / b / "lightcl-replay.json"
        doc = json.loads(made.read_text())
        assert doc["default"]["replay_budget"] == b
        assert all(e["replay_budget"] == b for e in doc["scenarios"].values())
        assert set(doc["scenarios"]) == set(base["scenarios"])
        assert _without(doc, {"replay_budget", "source"}) == _without(base, {"replay_budget", "source"})
        committed = ROOT / "docs" / "results" / "replay-budget" / b / "lightcl-replay.json"
        assert committed.read_bytes() == made.read_bytes(), f"{committed} is stale: rerun scripts/budget_configs.py"


def test_a_bad_budget_is_refused_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "budget_configs.py"), "--budgets", "lots",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "lots" in proc.stderr
