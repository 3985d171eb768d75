import json
import subprocess
import sys


def test_bench_update_runs_every_mode_in_its_own_process(digits_export, tmp_path):
    out = tmp_path / "u.json"
    r = subprocess.run([sys.executable, "-m", "lightcl", "bench", "update", str(digits_export), "--steps", "2",
                        "--warmup", "1", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    modes = [x["mode"] for x in res["results"]]
    assert modes == ["lightcl", "lightcl-torch", "lightcl-reference", "finetune"]
    by = {x["mode"]: x for x in res["results"]}
    for x in res["results"]:
        assert x["step_ms"] > 0 and x["peak_rss_delta_mib"] >= 0 and x["theoretical_mib"] > 0
    # the paper's accounting: fine-tuning trains every weight and keeps every activation
    assert by["finetune"]["theoretical_mib"] > by["lightcl"]["theoretical_mib"]
    assert by["finetune"]["trainable_params"] > by["lightcl"]["trainable_params"]
    assert by["lightcl"]["extractor"]["backend"] == "ort"
    assert "rss_lightcl_over_finetune" in res["ratios"] and "step_lightcl_over_reference" in res["ratios"]
