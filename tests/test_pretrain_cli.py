import json
import subprocess
import sys

import pytest

from lightcl.export.checkpoint import load_checkpoint


def test_pretrain_digits_reaches_90(digits_ckpt):
    meta = json.loads(digits_ckpt.with_name(digits_ckpt.name + ".json").read_text())
    assert meta["test_accuracy"] >= 0.90
    assert meta["arch"] == "resnet18" and meta["width"] == 16 and meta["dataset"] == "digits"
    for k in ("classes", "input_size", "normalization", "epochs", "seed", "sha256"):
        assert k in meta
    model, meta2 = load_checkpoint(digits_ckpt)
    assert meta2["sha256"] == meta["sha256"]


def test_tampered_checkpoint_refused(digits_ckpt, tmp_path):
    import shutil

    from lightcl.engine.errors import IntegrityError

    st = digits_ckpt.with_name(digits_ckpt.name + ".safetensors")
    js = digits_ckpt.with_name(digits_ckpt.name + ".json")
    shutil.copy(st, tmp_path / "c.safetensors")
    shutil.copy(js, tmp_path / "c.json")
    with open(tmp_path / "c.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(IntegrityError, match="sha256"):
        load_checkpoint(tmp_path / "c")


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lightcl", *args], capture_output=True, text=True, timeout=300, **kw)


def test_cli_help_lists_every_verb():
    r = _cli("--help")
    assert r.returncode == 0
    for verb in ("info", "pretrain", "export", "learn", "predict", "bench", "analyze", "demo"):
        assert verb in r.stdout
        assert _cli(verb, "--help").returncode == 0


def test_cli_info_reports_real_providers():
    r = _cli("info", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["execution_providers"]["CPUExecutionProvider"] == "ok"
    assert info["onnxruntime_package"] == "onnxruntime"
    assert info["cpu_count"] >= 1


def test_cli_pretrain_missing_dataset_is_one_line(tmp_path):
    r = _cli("pretrain", "--dataset", "cifar10", "--out", str(tmp_path / "x"), "--epochs", "1",
             env={**__import__("os").environ, "LIGHTCL_CACHE": str(tmp_path), "LIGHTCL_DATA_MIRROR": "http://127.0.0.1:9/"})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "not found" in r.stderr and "curl" in r.stderr
