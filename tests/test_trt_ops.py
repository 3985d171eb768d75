"""The jetson-nano profile's check against TensorRT 8.2's published ONNX operator list."""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _model(nodes, inits=(), opset=13, inputs=("x",), extra_opsets=()):
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs]
    outs = [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)]
    g = helper.make_graph(nodes, "g", ins, outs, initializer=[numpy_helper.from_array(a, n) for n, a in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    m.ir_version = 7
    return m


def _save(m, path):
    onnx.save(m, str(path))
    return path


W = ("w", np.ones((4, 3, 3, 3), np.float32))


def test_supported_graph_passes(tmp_path):
    from lightcl.export.trt_ops import check_trt82, summary

    m = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
                helper.make_node("GlobalAveragePool", ["r"], ["y"])], [W])
    rep = check_trt82(_save(m, tmp_path / "ok.onnx"))
    assert rep["passed"] and rep["opset"] == 13 and rep["unsupported"] == []
    assert rep["ops"] == {"Conv": 1, "GlobalAveragePool": 1, "Relu": 1}
    assert "2D or 3D" in rep["restrictions"]["Conv"]
    assert rep["source"]["commit"] == "f42daeee49f2517a954c5601f0f76bef9ed94b62"
    assert "all 3 operator types supported" in summary(rep)


def test_unsupported_ops_opset_and_restrictions_are_reported(tmp_path):
    from lightcl.export.trt_ops import check_trt82, summary

    zp = ("zp", np.array(128, np.uint8))
    scale = ("s", np.array(0.1, np.float32))
    then_g = helper.make_graph([helper.make_node("Reciprocal", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Mod", ["x", "x"], ["m"]),
             helper.make_node("Conv", ["m", "wi"], ["c"]),                       # weights not an initializer
             helper.make_node("QuantizeLinear", ["c", "s", "zp"], ["q"]),        # asymmetric uint8
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"]),
             helper.make_node("Gelu", ["d"], ["g"], domain="com.microsoft"),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    m = _model(nodes, [zp, scale], opset=13, inputs=("x", "wi", "cond"),
               extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    rep = check_trt82(_save(m, tmp_path / "bad.onnx"))
    assert not rep["passed"] and rep["opset_ok"]
    why = {u["op"]: u["why"] for u in rep["unsupported"]}
    assert set(why) == {"Mod", "Conv", "QuantizeLinear", "DequantizeLinear", "com.microsoft::Gelu", "Reciprocal"}
    assert "unsupported" in why["Mod"] and "initializer" in why["Conv"] and "int8" in why["QuantizeLinear"]
    assert "plugin" in why["com.microsoft::Gelu"]
    line = summary(rep)
    assert line.startswith("TensorRT 8.2 operator check") and "NOT parseable" in line and "Mod x1" in line

    m18 = _model([helper.make_node("Relu", ["x"], ["y"])], opset=18)
    rep = check_trt82(_save(m18, tmp_path / "o18.onnx"))
    assert not rep["passed"] and not rep["opset_ok"] and "> 13" in summary(rep)


def test_quantized_conv_weights_through_dequantizelinear_are_accepted(tmp_path):
    """TensorRT's explicit quantization: DequantizeLinear(int8 initializer, zero point 0) -> Conv weights."""
    from lightcl.export.trt_ops import check_trt82

    inits = [("wq", np.ones((4, 3, 3, 3), np.int8)), ("s", np.array(0.1, np.float32)), ("z", np.array(0, np.int8))]
    m = _model([helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"]),
                helper.make_node("Conv", ["x", "w"], ["y"])], inits)
    rep = check_trt82(_save(m, tmp_path / "qdq.onnx"))
    assert rep["passed"], rep["unsupported"]


def test_check_export_refuses_an_unparseable_frozen_graph(tmp_path):
    from lightcl.engine.errors import LightCLError
    from lightcl.export.trt_ops import UnsupportedOperatorError, check_export

    _save(_model([helper.make_node("NonZero", ["x"], ["y"])]), tmp_path / "frozen.onnx")
    meta, said = {}, []
    with pytest.raises(UnsupportedOperatorError, match="NonZero") as e:
        check_export(tmp_path, meta, said.append)
    assert isinstance(e.value, LightCLError) and meta["trt82_check"]["frozen.onnx"]["passed"] is False and said


def test_jetson_nano_export_reports_the_check(digits_ckpt, tmp_path):
    """A real jetson-nano export: every operator of frozen.onnx is on TensorRT 8.2's list; output and meta.json."""
    from lightcl.export.onnx_export import export_checkpoint, summary_lines

    out = tmp_path / "nano"
    meta = export_checkpoint(digits_ckpt, out, split="layer3", profile="jetson-nano", progress=False)
    rep = meta["trt82_check"]["frozen.onnx"]
    assert rep["passed"] and rep["opset"] == 13, rep
    assert set(rep["ops"]) <= {"Conv", "Relu", "Add", "Identity", "Constant"} and rep["ops"]["Conv"] >= 10
    lines = summary_lines(meta, out)
    said = [ln for ln in lines if "TensorRT 8.2 operator check (frozen.onnx, opset 13)" in ln]
    assert len(said) == 1 and "supported" in said[0]
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["trt82_check"]["frozen.onnx"]["ops"] == rep["ops"]
