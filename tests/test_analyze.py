"""``lightcl analyze``: LP / MS per block, as bench/analysis.py defines them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lightcl.bench.analysis import linear_cka, units_of


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=g)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-9)  # rotation, scale, shift invariant
    y = torch.randn(64, 20, generator=g)
    assert 0.0 <= linear_cka(x, y) < 0.6
    assert linear_cka(x.view(64, 5, 2, 2), x.view(64, 20)) == pytest.approx(1.0)  # any trailing shape


def test_units_follow_split_points():
    from lightcl.export.zoo import create_backbone, split_points

    m = create_backbone("resnet18", width=16)
    stages = units_of(m, "stage")
    assert [n for n, _ in stages] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert [len(ids) for _, ids in stages] == [1, 2, 2, 2, 2]
    blocks = units_of(m, "block")
    assert len(blocks) == 9 and all(n in split_points(m) for n, _ in blocks)


def test_analyze_cli_writes_table_plot_and_recommendation(digits_ckpt, tmp_path):
    out = tmp_path / "an"
    r = subprocess.run([sys.executable, "-m", "lightcl", "analyze", str(digits_ckpt), "--dataset", "digits",
                        "--epochs", "1", "--max-train", "96", "--max-eval", "64", "--threads", "1", "--quiet",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "recommended split:" in r.stdout and "layer4" in r.stdout
    res = json.loads((out / "analysis.json").read_text())
    assert [row["unit"] for row in res["rows"]] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    for row in res["rows"]:
        assert 0.0 <= row["ms"] <= 1.0 + 1e-9
        assert -100.0 <= row["lp_single"] <= 100.0 and -100.0 <= row["lp_prefix"] <= 100.0
        assert row["params"] > 0
    assert res["rows"][0]["lp_prefix"] == res["rows"][0]["lp_single"]  # the first boundary freezes one unit
    assert res["old_classes"] == [0, 1, 2, 3, 4] and res["new_classes"] == [5, 6, 7, 8, 9]
    rec = res["recommended_split"]
    ok = [row["unit"] for row in res["rows"] if row["frozen_ok"]]
    assert rec is None or rec in ok
    if rec is not None:  # every unit up to the recommendation keeps MS above the threshold
        idx = [row["unit"] for row in res["rows"]].index(rec)
        assert all(row["ms"] >= res["ms_threshold"] for row in res["rows"][: idx + 1])
        assert res["rows"][idx]["lp_prefix"] <= res["lp_threshold"]
    assert (out / "analysis.png").read_bytes()[:4] == b"\x89PNG"
    assert "Recommended split" in (out / "analysis.md").read_text()


def test_analyze_refuses_overlapping_classes(digits_ckpt):
    from lightcl.bench.analysis import analyze
    from lightcl.engine.errors import InputError

    with pytest.raises(InputError, match="disjoint"):
        analyze(digits_ckpt, "digits", old_classes=[0, 1], new_classes=[1, 2], progress=False)
