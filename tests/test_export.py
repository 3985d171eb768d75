"""`lightcl export`: directory contents, parity at every split point, profiles, int8, refusals, TensorRT exit 3."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lightcl.engine.errors import InputError, MissingDependencyError  # noqa: E402
from lightcl.engine.export_dir import frozen_id_of, load_export_meta, load_head  # noqa: E402
from lightcl.engine.fileio import sha256_file  # noqa: E402
from lightcl.export.onnx_export import (  # noqa: E402
    AgreementError, ParityError, check_parity, export_checkpoint, export_onnx, real_images)

REQUIRED_META = ["format", "split", "arch", "width", "input_shape", "feature_shape", "normalization", "dataset",
                 "classes", "num_classes", "exporter", "opset", "profile", "versions", "files", "frozen_id", "parity",
                 "checkpoint"]


@pytest.fixture(scope="module")
def exported(digits_ckpt, tmp_path_factory):
    """The default profile (dynamo exporter, opset 18) with --int8, exported once for this module."""
    out = tmp_path_factory.mktemp("exp") / "default"
    meta = export_checkpoint(digits_ckpt, out, split="layer3", int8=True, calib_size=64, progress=False)
    return out, meta


def test_export_directory_and_meta(exported):
    out, meta = exported
    names = {p.name for p in out.iterdir()}
    assert {"frozen.onnx", "frozen.safetensors", "head.safetensors", "frozen.int8.onnx", "meta.json"} <= names
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    for k in REQUIRED_META:
        assert k in meta, k
    assert meta["format"] == "lightcl-export/2"
    assert meta["input_shape"] == [3, 32, 32] and meta["feature_shape"] == [64, 8, 8]  # width 16, layer3
    assert meta["exporter"] == "dynamo" and meta["opset"] >= 18 and meta["profile"] == "default"
    assert meta["frozen_id"] == frozen_id_of(meta["files"])  # covers frozen.onnx and frozen.safetensors
    assert set(meta["files"]) == names - {"meta.json"}
    for name, sha in meta["files"].items():
        assert sha256_file(out / name) == sha
    assert len(meta["normalization"]["mean"]) == 3 and meta["dataset"] == "digits" and meta["num_classes"] == 10
    par = meta["parity"]
    assert par["passed"] and par["max_abs_diff"] <= 1e-4 and par["mean_abs_diff"] <= par["max_abs_diff"]
    assert par["batch"] >= 32 and "digits test" in par["images"]
    assert par["torch_rebuild_max_abs_diff"] == 0.0
    assert par["top1_agreement"] == 1.0
    assert meta["versions"]["torch"] == torch.__version__
    # dynamic batch axis, example batch >= 2
    model = onnx.load(str(out / "frozen.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert meta["onnx"]["example_batch"] >= 2
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    head = load_head(out)
    assert list(head.in_features) == meta["feature_shape"] and head.num_classes == 10
    assert load_export_meta(out)["frozen_id"] == meta["frozen_id"]


def test_int8_report(exported):
    out, meta = exported
    r = meta["int8"]
    assert 0.9 < r["feature_cosine_mean"] <= 1.0 and r["feature_cosine_min"] <= r["feature_cosine_mean"]
    assert r["top1_agreement"] >= 0.98 and r["heldout"] >= 64 and not r["forced"]
    assert r["quantization"]["format"] == "QDQ" and r["quantization"]["quantize_linear_nodes"] > 0
    ops = {n.op_type for n in onnx.load(str(out / "frozen.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_parity_at_every_split_point(digits_ckpt, tmp_path):
    """Every named split: the 5 stage-level ones with the dynamo exporter, the 8 block-level with the legacy one."""
    from lightcl.engine.frozen import save_frozen
    from lightcl.export.checkpoint import load_checkpoint
    from lightcl.export.zoo import split_backbone, split_points

    model, ck = load_checkpoint(digits_ckpt)
    x, y = real_images("digits", "test", 16, ck["normalization"], seed=1)
    names = split_points(model)
    assert len(names) == 13
    for split in names:
        frozen, head = split_backbone(model, split)
        profile = "default" if "." not in split else "jetson-nano"
        info = export_onnx(frozen, tmp_path / "f.onnx", profile)
        save_frozen(tmp_path / "f.safetensors", frozen, list(frozen.block_names))
        rep = check_parity(frozen, head, tmp_path / "f.onnx", tmp_path / "f.safetensors", x, y, 1e-4, "digits test")
        assert rep["passed"], (split, rep)
        assert rep["top1_agreement"] == 1.0, split
        assert info["opset"] == (18 if profile == "default" else 13)


def test_jetson_nano_profile_is_opset_13(digits_ckpt, tmp_path):
    out = tmp_path / "nano"
    meta = export_checkpoint(digits_ckpt, out, split="layer2", profile="jetson-nano", progress=False)
    model = onnx.load(str(out / "frozen.onnx"))
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 13
    assert meta["opset"] == 13 and meta["exporter"] == "legacy" and meta["profile"] == "jetson-nano"
    assert "TensorRT 8.2" in meta["profile_reason"] and "13" in meta["profile_reason"]
    assert meta["feature_shape"] == [32, 16, 16]
    assert "frozen.int8.onnx" not in meta["files"]


def test_parity_failure_exits_nonzero_and_writes_nothing(digits_ckpt, tmp_path):
    from lightcl.cli import main

    out = tmp_path / "strict"
    with pytest.raises(ParityError):
        export_checkpoint(digits_ckpt, out, profile="jetson-nano", atol=1e-12, progress=False)
    assert not out.exists()
    rc = main(["export", str(digits_ckpt), "--out", str(out), "--profile", "jetson-nano", "--atol", "1e-12", "--quiet"])
    assert rc == 1 and not out.exists()


def test_int8_refused_below_min_agreement_unless_forced(digits_ckpt, tmp_path, monkeypatch):
    import lightcl.export.quantize as q

    real = q.int8_report

    def poor(*a, **k):
        rep = real(*a, **k)
        rep["top1_agreement"] = 0.5
        return rep

    monkeypatch.setattr(q, "int8_report", poor)
    out = tmp_path / "q"
    with pytest.raises(AgreementError, match="--force"):
        export_checkpoint(digits_ckpt, out, profile="jetson-nano", int8=True, calib_size=32, progress=False)
    assert not out.exists()
    meta = export_checkpoint(digits_ckpt, out, profile="jetson-nano", int8=True, calib_size=32, force=True,
                             progress=False)
    assert meta["int8"]["forced"] and (out / "frozen.int8.onnx").is_file()


def test_refuses_to_replace_a_foreign_directory(digits_ckpt, tmp_path):
    victim = tmp_path / "notes"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a lightcl export"):
        export_checkpoint(digits_ckpt, victim, profile="jetson-nano", progress=False)
    assert (victim / "precious.txt").read_text() == "keep me"


def test_tensorrt_missing_exits_3_with_one_line(digits_ckpt, tmp_path):
    try:
        from lightcl.export.tensorrt_build import require_tensorrt

        require_tensorrt()
        pytest.skip("TensorRT and CUDA are available here")
    except MissingDependencyError:
        pass
    out = tmp_path / "trt"
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "lightcl", "export", str(digits_ckpt), "--out", str(out),
                           "--tensorrt", "--fp16"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "tensorrt" in lines[0].lower()
    assert not out.exists()
    assert Path(sys.executable).exists()
