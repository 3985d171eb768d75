"""Will TensorRT 8.2's ONNX parser (JetPack 4.6, the last for the original Jetson Nano) take this graph?

The operator table below is NVIDIA's published support matrix for the TensorRT 8.2 ONNX parser:
``docs/operators.md`` of github.com/onnx/onnx-tensorrt, branch ``release/8.2-GA``, commit
f42daeee49f2517a954c5601f0f76bef9ed94b62 (the file's content is that of 85e79f629fb546a75d61e3027fb259a9529144fe,
"TensorRT 8.2 ONNX Parser Release", 2021-11-23, plus a master->main link fix). "TensorRT 8.2 supports
operators up to Opset 13." Each entry: (supported, supported types, restrictions), as published; the
typo "initailizer" is theirs.

:func:`check_trt82` reads an ONNX file (the host side: needs ``onnx``) and reports every operator
the graph uses (subgraphs included) against the table, the opset, and the restrictions that can be
checked statically on our graphs (Conv weights are initializers, or DequantizeLinear of one, and 2D/3D; Q/DQ zero points are 0
and int8; Squeeze/Unsqueeze/Slice axes are constant). The other published restrictions of the
operators used are listed for a human to read. This is a check against the published list, not a
TensorRT build: only ``trtexec --onnx`` on the board proves the plan builds (scripts/jetson/).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from lightcl.engine.errors import LightCLError

from .artefacts import Build, register_artefact

TRT82_SOURCE = {
    "parser": "TensorRT 8.2 ONNX parser (onnx-tensorrt release/8.2-GA)",
    "url": "https://github.com/onnx/onnx-tensorrt/blob/release/8.2-GA/docs/operators.md",
    "commit": "f42daeee49f2517a954c5601f0f76bef9ed94b62",
    "max_opset": 13,
}

# operator -> (supported, supported types, restrictions), transcribed from the file above
TRT82_OPERATORS: dict[str, tuple[bool, str, str]] = {
    'Abs': (True, 'FP32, FP16, INT32', ''),
    'Acos': (True, 'FP32, FP16', ''),
    'Acosh': (True, 'FP32, FP16', ''),
    'Add': (True, 'FP32, FP16, INT32', ''),
    'And': (True, 'BOOL', ''),
    'ArgMax': (True, 'FP32, FP16', ''),
    'ArgMin': (True, 'FP32, FP16', ''),
    'Asin': (True, 'FP32, FP16', ''),
    'Asinh': (True, 'FP32, FP16', ''),
    'Atan': (True, 'FP32, FP16', ''),
    'Atanh': (True, 'FP32, FP16', ''),
    'AveragePool': (True, 'FP32, FP16, INT8, INT32', '2D or 3D Pooling only'),
    'BatchNormalization': (True, 'FP32, FP16', ''),
    'BitShift': (False, '', ''),
    'Cast': (True, 'FP32, FP16, INT32, INT8, BOOL', ''),
    'Ceil': (True, 'FP32, FP16', ''),
    'Celu': (True, 'FP32, FP16', ''),
    'Clip': (True, 'FP32, FP16, INT8', ''),
    'Compress': (False, '', ''),
    'Concat': (True, 'FP32, FP16, INT32, INT8, BOOL', ''),
    'ConcatFromSequence': (False, '', ''),
    'Constant': (True, 'FP32, FP16, INT32, INT8, BOOL', ''),
    'ConstantOfShape': (True, 'FP32', ''),
    'Conv': (True, 'FP32, FP16, INT8', '2D or 3D convolutions only. Weights `W` must be an initailizer'),
    'ConvInteger': (False, '', ''),
    'ConvTranspose': (True, 'FP32, FP16, INT8', '2D or 3D deconvolutions only. Weights `W` must be an initializer'),
    'Cos': (True, 'FP32, FP16', ''),
    'Cosh': (True, 'FP32, FP16', ''),
    'CumSum': (True, 'FP32, FP16', '`axis` must be an initializer'),
    'DepthToSpace': (True, 'FP32, FP16, INT32', ''),
    'DequantizeLinear': (True, 'INT8', '`x_zero_point` must be zero'),
    'Det': (False, '', ''),
    'Div': (True, 'FP32, FP16, INT32', ''),
    'Dropout': (True, 'FP32, FP16', ''),
    'DynamicQuantizeLinear': (False, '', ''),
    'Einsum': (True, 'FP32, FP16', 'Ellipsis and diagonal operations are not supported. Broadcasting between inputs is not supported'),
    'Elu': (True, 'FP32, FP16, INT8', ''),
    'Equal': (True, 'FP32, FP16, INT32', ''),
    'Erf': (True, 'FP32, FP16', ''),
    'Exp': (True, 'FP32, FP16', ''),
    'Expand': (True, 'FP32, FP16, INT32, BOOL', ''),
    'EyeLike': (True, 'FP32, FP16, INT32, BOOL', ''),
    'Flatten': (True, 'FP32, FP16, INT32, BOOL', ''),
    'Floor': (True, 'FP32, FP16', ''),
    'Gather': (True, 'FP32, FP16, INT8, INT32', ''),
    'GatherElements': (True, 'FP32, FP16, INT8, INT32', ''),
    'GatherND': (True, 'FP32, FP16, INT8, INT32', ''),
    'Gemm': (True, 'FP32, FP16, INT8', ''),
    'GlobalAveragePool': (True, 'FP32, FP16, INT8', ''),
    'GlobalLpPool': (True, 'FP32, FP16, INT8', ''),
    'GlobalMaxPool': (True, 'FP32, FP16, INT8', ''),
    'Greater': (True, 'FP32, FP16, INT32', ''),
    'GreaterOrEqual': (True, 'FP32, FP16, INT32', ''),
    'GRU': (True, 'FP32, FP16', 'For bidirectional GRUs, activation functions must be the same for both the forward and reverse pass'),
    'HardSigmoid': (True, 'FP32, FP16, INT8', ''),
    'Hardmax': (False, '', ''),
    'Identity': (True, 'FP32, FP16, INT32, INT8, BOOL', ''),
    'If': (True, 'FP32, FP16, INT32, BOOL', 'Output tensors of the two conditional branches must have broadcastable shapes, and must have different names'),
    'ImageScaler': (True, 'FP32, FP16', ''),
    'InstanceNormalization': (True, 'FP32, FP16', 'Scales `scale` and biases `B` must be initializers. Input rank must be >=3 & <=5'),
    'IsInf': (False, '', ''),
    'IsNaN': (True, 'FP32, FP16, INT32', ''),
    'LeakyRelu': (True, 'FP32, FP16, INT8', ''),
    'Less': (True, 'FP32, FP16, INT32', ''),
    'LessOrEqual': (True, 'FP32, FP16, INT32', ''),
    'Log': (True, 'FP32, FP16', ''),
    'LogSoftmax': (True, 'FP32, FP16', ''),
    'Loop': (True, 'FP32, FP16, INT32, BOOL', ''),
    'LRN': (True, 'FP32, FP16', ''),
    'LSTM': (True, 'FP32, FP16', 'For bidirectional LSTMs, activation functions must be the same for both the forward and reverse pass'),
    'LpNormalization': (True, 'FP32, FP16', ''),
    'LpPool': (True, 'FP32, FP16, INT8', ''),
    'MatMul': (True, 'FP32, FP16', ''),
    'MatMulInteger': (False, '', ''),
    'Max': (True, 'FP32, FP16, INT32', ''),
    'MaxPool': (True, 'FP32, FP16, INT8', '2D or 3D pooling only. `Indices` output tensor unsupported'),
    'MaxRoiPool': (False, '', ''),
    'MaxUnpool': (False, '', ''),
    'Mean': (True, 'FP32, FP16, INT32', ''),
    'MeanVarianceNormalization': (False, '', ''),
    'Min': (True, 'FP32, FP16, INT32', ''),
    'Mod': (False, '', ''),
    'Mul': (True, 'FP32, FP16, INT32', ''),
    'Multinomial': (False, '', ''),
    'Neg': (True, 'FP32, FP16, INT32', ''),
    'NegativeLogLikelihoodLoss': (False, '', ''),
    'NonMaxSuppression': (False, 'FP32, FP16', 'Inputs `max_output_boxes_per_class`, `iou_threshold`, and `score_threshold` must be initializers. Output has fixed shape and is padded to [`max_output_boxes_per_class`, 3].'),
    'NonZero': (False, '', ''),
    'Not': (True, 'BOOL', ''),
    'OneHot': (False, '', ''),
    'Or': (True, 'BOOL', ''),
    'Pad': (True, 'FP32, FP16, INT8, INT32', ''),
    'ParametricSoftplus': (True, 'FP32, FP16, INT8', ''),
    'Pow': (True, 'FP32, FP16', ''),
    'PRelu': (True, 'FP32, FP16, INT8', ''),
    'QLinearConv': (False, '', ''),
    'QLinearMatMul': (False, '', ''),
    'QuantizeLinear': (True, 'FP32, FP16', '`y_zero_point` must be 0'),
    'RandomNormal': (False, '', ''),
    'RandomNormalLike': (False, '', ''),
    'RandomUniform': (True, 'FP32, FP16', '`seed` value is ignored by TensorRT'),
    'RandomUniformLike': (True, 'FP32, FP16', '`seed` value is ignored by TensorRT'),
    'Range': (True, 'FP32, FP16, INT32', 'Floating point inputs are only supported if `start`, `limit`, and `delta` inputs are initializers'),
    'Reciprocal': (False, '', ''),
    'ReduceL1': (True, 'FP32, FP16', ''),
    'ReduceL2': (True, 'FP32, FP16', ''),
    'ReduceLogSum': (True, 'FP32, FP16', ''),
    'ReduceLogSumExp': (True, 'FP32, FP16', ''),
    'ReduceMax': (True, 'FP32, FP16', ''),
    'ReduceMean': (True, 'FP32, FP16', ''),
    'ReduceMin': (True, 'FP32, FP16', ''),
    'ReduceProd': (True, 'FP32, FP16', ''),
    'ReduceSum': (True, 'FP32, FP16', ''),
    'ReduceSumSquare': (True, 'FP32, FP16', ''),
    'Relu': (True, 'FP32, FP16, INT8', ''),
    'Reshape': (True, 'FP32, FP16, INT32, INT8, BOOL', ''),
    'Resize': (True, 'FP32, FP16', 'Supported resize transformation modes: `half_pixel`, `pytorch_half_pixel`, `tf_half_pixel_for_nn`, `asymmetric`, and `align_corners`.<br />Supported resize modes: `nearest`, `linear`.<br />Supported nearest modes: `floor`, `ceil`, `round_prefer_floor`, `round_prefer_ceil`'),
    'ReverseSequence': (True, 'FP32, FP16', 'Dynamic input shapes are unsupported'),
    'RNN': (True, 'FP32, FP16', 'For bidirectional RNNs, activation functions must be the same for both the forward and reverse pass'),
    'RoiAlign': (False, '', ''),
    'Round': (True, 'FP32, FP16, INT8', ''),
    'ScaledTanh': (True, 'FP32, FP16, INT8', ''),
    'Scan': (True, 'FP32, FP16', ''),
    'Scatter': (True, 'FP32, FP16, INT8, INT32', ''),
    'ScatterElements': (True, 'FP32, FP16, INT8, INT32', ''),
    'ScatterND': (True, 'FP32, FP16, INT8, INT32', ''),
    'Selu': (True, 'FP32, FP16, INT8', ''),
    'SequenceAt': (False, '', ''),
    'SequenceConstruct': (False, '', ''),
    'SequenceEmpty': (False, '', ''),
    'SequenceErase': (False, '', ''),
    'SequenceInsert': (False, '', ''),
    'SequenceLength': (False, '', ''),
    'Shape': (True, 'FP32, FP16, INT32, INT8, BOOL', ''),
    'Shrink': (False, '', ''),
    'Sigmoid': (True, 'FP32, FP16, INT8', ''),
    'Sign': (True, 'FP32, FP16, INT8, INT32', ''),
    'Sin': (True, 'FP32, FP16', ''),
    'Sinh': (True, 'FP32, FP16', ''),
    'Size': (True, 'FP32, FP16, INT32, INT8, BOOL', ''),
    'Slice': (True, 'FP32, FP16, INT32, INT8, BOOL', '`axes` must be an initializer'),
    'Softmax': (True, 'FP32, FP16', ''),
    'SoftmaxCrossEntropyLoss': (False, '', ''),
    'Softplus': (True, 'FP32, FP16, INT8', ''),
    'Softsign': (True, 'FP32, FP16, INT8', ''),
    'SpaceToDepth': (True, 'FP32, FP16, INT32', ''),
    'Split': (True, 'FP32, FP16, INT32, BOOL', ''),
    'SplitToSequence': (False, '', ''),
    'Sqrt': (True, 'FP32, FP16', ''),
    'Squeeze': (True, 'FP32, FP16, INT32, INT8, BOOL', '`axes` must be an initializer'),
    'StringNormalizer': (False, '', ''),
    'Sub': (True, 'FP32, FP16, INT32', ''),
    'Sum': (True, 'FP32, FP16, INT32', ''),
    'Tan': (True, 'FP32, FP16', ''),
    'Tanh': (True, 'FP32, FP16, INT8', ''),
    'TfIdfVectorizer': (False, '', ''),
    'ThresholdedRelu': (True, 'FP32, FP16, INT8', ''),
    'Tile': (True, 'FP32, FP16, INT32, BOOL', ''),
    'TopK': (True, 'FP32, FP16', '`K` input must be an initializer'),
    'Transpose': (True, 'FP32, FP16, INT32, INT8, BOOL', ''),
    'Unique': (False, '', ''),
    'Unsqueeze': (True, 'FP32, FP16, INT32, INT8, BOOL', '`axes` must be a constant tensor'),
    'Upsample': (True, 'FP32, FP16', ''),
    'Where': (True, 'FP32, FP16, INT32, BOOL', ''),
    'Xor': (False, '', ''),
}

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _walk_nodes(graph) -> list:
    """Every node of ``graph`` and of its subgraphs (If / Loop / Scan bodies)."""
    out = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            if attr.g is not None and len(attr.g.node):
                out.extend(_walk_nodes(attr.g))
            for g in attr.graphs:
                out.extend(_walk_nodes(g))
    return out


def _constants(graph) -> dict[str, Any]:
    """Tensor names whose values are known statically: initializers and Constant node outputs -> numpy."""
    from onnx import numpy_helper

    known = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    known[node.output[0]] = numpy_helper.to_array(attr.t)
    return known


def _static_restrictions(node, known: dict[str, Any], producers: dict[str, Any]) -> str | None:
    """The published restriction this node breaks, for the ones checkable statically; else None."""
    op, ins = node.op_type, list(node.input)
    if op == "Conv":
        w = ins[1] if len(ins) > 1 else None
        src = producers.get(w)
        if w not in known and src is not None and src.op_type == "DequantizeLinear" and src.input[0] in known:
            w = src.input[0]  # explicit quantization: DequantizeLinear(initializer) -> Conv, which TensorRT fuses
        if w not in known:
            return "Conv weights `W` must be an initializer"
        if known[w].ndim not in (4, 5):
            return f"only 2D or 3D convolutions (weights of rank {known[w].ndim})"
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        zp = ins[2] if len(ins) > 2 and ins[2] else None
        if zp is not None:
            if zp not in known:
                return f"{op} zero point must be a constant 0"
            z = known[zp]
            if z.dtype.name != "int8":
                return f"{op} zero point must be int8 (TensorRT quantization is symmetric int8), got {z.dtype.name}"
            if (z != 0).any():
                return f"{op} zero point must be 0"
    elif op in ("Squeeze", "Unsqueeze", "Slice"):
        idx = 3 if op == "Slice" else 1
        if len(ins) > idx and ins[idx] and ins[idx] not in known:
            return f"{op} `axes` must be an initializer"
    return None


def check_trt82(onnx_path: str | Path) -> dict[str, Any]:
    """Every operator of the graph at ``onnx_path`` against TensorRT 8.2's published ONNX support.

    Returns ``{"passed", "opset", "opset_ok", "ops" (op -> count), "unsupported" ([{op, count, why}]),
    "restrictions" (op -> published text, for the used ops that have one), "source"}``; never raises
    for an unsupported graph (the caller decides)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    known = _constants(model.graph)
    nodes = _walk_nodes(model.graph)
    producers = {out: node for node in nodes for out in node.output}
    counts: dict[str, int] = {}
    problems: dict[tuple[str, str], int] = {}
    for node in nodes:
        name = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
        counts[name] = counts.get(name, 0) + 1
        entry = TRT82_OPERATORS.get(node.op_type) if node.domain in _DEFAULT_DOMAINS else None
        if entry is None:
            why = ("custom-domain operator: needs a TensorRT plugin" if node.domain not in _DEFAULT_DOMAINS
                   else "not in TensorRT 8.2's ONNX operator list")
        elif not entry[0]:
            why = "listed as unsupported by TensorRT 8.2's ONNX parser"
        else:
            why = _static_restrictions(node, known, producers)
        if why:
            problems[(name, why)] = problems.get((name, why), 0) + 1
    unsupported = [{"op": op, "count": n, "why": why} for (op, why), n in sorted(problems.items())]
    opset_ok = opset is not None and opset <= TRT82_SOURCE["max_opset"]
    restrictions = {op: TRT82_OPERATORS[op][2] for op in sorted(counts)
                    if op in TRT82_OPERATORS and TRT82_OPERATORS[op][2]}
    return {"passed": opset_ok and not unsupported, "file": Path(onnx_path).name, "opset": opset,
            "opset_ok": opset_ok, "ops": dict(sorted(counts.items())), "unsupported": unsupported,
            "restrictions": restrictions, "source": dict(TRT82_SOURCE)}


def summary(rep: dict[str, Any]) -> str:
    """One line for the export output."""
    head = (f"TensorRT 8.2 operator check ({rep['file']}, opset {rep['opset']}"
            f"{'' if rep['opset_ok'] else ' > 13'}): ")
    if rep["passed"]:
        return head + f"all {len(rep['ops'])} operator types supported ({', '.join(rep['ops'])})"
    bad = "; ".join(f"{u['op']} x{u['count']}: {u['why']}" for u in rep["unsupported"])
    return head + "NOT parseable: " + (bad or f"opset {rep['opset']} > {TRT82_SOURCE['max_opset']}")


class UnsupportedOperatorError(LightCLError):
    """A ``jetson-nano`` export whose frozen.onnx TensorRT 8.2's ONNX parser would not take."""


def check_export(export_dir: str | Path, meta: dict[str, Any], say: Callable[[str], None] = print) -> None:
    """The jetson-nano profile's check: each ONNX file of ``export_dir`` against TensorRT 8.2's list, recorded
    in ``meta["trt82_check"]`` (file name -> report) and said.

    An unparseable frozen.onnx raises :class:`UnsupportedOperatorError` (the export writes nothing): it is the
    graph the Nano's TensorRT builds from. frozen.int8.onnx (onnxruntime's QDQ model, asymmetric uint8
    activations) is reported only: TensorRT calibrates its own int8 plan from frozen.onnx."""
    export_dir = Path(export_dir)
    meta["trt82_check"] = {}
    for name in ("frozen.onnx", "frozen.int8.onnx"):
        if (export_dir / name).is_file():
            rep = check_trt82(export_dir / name)
            meta["trt82_check"][name] = rep
            say(summary(rep))
    rep = meta["trt82_check"].get("frozen.onnx")
    if rep is not None and not rep["passed"]:
        raise UnsupportedOperatorError(f"profile jetson-nano: {summary(rep)}; nothing written")


__all__ = ["TRT82_OPERATORS", "TRT82_SOURCE", "check_trt82", "check_export", "summary", "UnsupportedOperatorError"]


@register_artefact("trt82", order=30, needs=("onnx",), files="none (meta.json's trt82_check)")
def build_trt82(b: Build, _options: None) -> None:
    """The jetson-nano profile's check of every ONNX file written so far against TensorRT 8.2's operators."""
    check_export(b.dir, b.meta, b.say)
