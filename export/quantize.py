"""Static int8 quantization of the frozen part (QDQ format, onnxruntime.quantization).

Calibration feeds REAL images (the checkpoint's dataset, train split) through
:class:`ImageCalibrationReader`; the result is checked on a held-out batch (test split) by
:func:`int8_report`: feature cosine similarity and top-1 agreement of the whole model
(int8 extractor + fp32 head vs fp32 extractor + head).

Defaults: QDQ, per-channel symmetric int8 weights, asymmetric **uint8 activations** (U8S8), MinMax
calibration. U8S8 rather than onnxruntime's documented first choice S8S8 because it is what the CPU
provider actually fuses here: measured with onnxruntime 1.32 on an AVX512-VNNI x86-64 CPU (width-64
ResNet-18 up to layer3, batch 1, 1 thread), the U8S8 model becomes 15 QLinearConv + 6 QLinearAdd in
NHWC (about 0.25x the fp32 latency), while the S8S8 model keeps 9 of 15 convolutions as
DequantizeLinear -> fp32 Conv (about 0.8x fp32). On x86-64 CPUs *without* VNNI, U8S8 can saturate
(onnxruntime's docs suggest ``reduce_range``); the agreement check at export catches that.
``symmetric_activations=True`` with ``activation="int8"`` gives zero-points of 0, as TensorRT's
explicit quantization requires.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightcl.engine.errors import InputError, LightCLError
from lightcl.engine.optional import require

from .artefacts import Build, Int8Options, register_artefact
from .ort_run import ort_session, run_session

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DENSE_CALIB_SIZE = 256
"""``--calib-size auto`` for a dense export: real images for int8 calibration."""
PRUNED_CALIB_SIZE = 1024
"""``--calib-size auto`` for a pruned export (``--sparsity``). Why more: a recovered pruned model at
~55 % accuracy has many fp32 near-ties, which the agreement check counts one image (0.4 %) at a time;
measured on the pruned width-64 digits export (docs/results/sparse-latency.md, "int8 calibration")."""
_ORT_INSTALL = "pip install 'lightcl[ort]'"


class AgreementError(LightCLError):
    """The int8 model disagrees with fp32 on too many held-out images (override with --force)."""


def _quantization():
    """onnxruntime's quantization tools, or MissingDependencyError (exit 3) naming the extra."""
    return require("onnxruntime.quantization", needed_for="--int8 (onnxruntime's quantization tools)",
                   install=_ORT_INSTALL)


def resolve_calib_size(value: int | str | None, pruned: bool) -> int:
    """``"auto"`` (or None): :data:`PRUNED_CALIB_SIZE` for a pruned export, :data:`DENSE_CALIB_SIZE`
    otherwise; an explicit int is kept as it is (the caller checks it is >= 1)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return PRUNED_CALIB_SIZE if pruned else DENSE_CALIB_SIZE
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise InputError(f"--calib-size must be 'auto' or an integer, got {value!r}")


def make_calibration_reader(input_name: str, x: torch.Tensor, batch_size: int = 32, progress: bool = False):
    """A ``CalibrationDataReader`` over a float tensor of normalised real images, in batches."""
    q = _quantization()

    class ImageCalibrationReader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [np.ascontiguousarray(x[i:i + batch_size].numpy(), dtype=np.float32)
                            for i in range(0, x.shape[0], batch_size)]
            self.i = 0
            self.bar = None
            if progress:
                from tqdm import tqdm

                self.bar = tqdm(total=len(self.batches), desc="int8 calibration", unit="batch", leave=False,
                                file=sys.stderr)

        def get_next(self):
            if self.i >= len(self.batches):
                if self.bar is not None:
                    self.bar.close()
                    self.bar = None
                return None
            b = self.batches[self.i]
            self.i += 1
            if self.bar is not None:
                self.bar.update(1)
            return {input_name: b}

        def rewind(self) -> None:
            self.i = 0

        def __len__(self) -> int:
            return len(self.batches)

    return ImageCalibrationReader()


def quantize_frozen(fp32_path: str | Path, out_path: str | Path, calib_x: torch.Tensor, *, method: str = "minmax",
                    per_channel: bool = True, activation: str = "uint8", symmetric_activations: bool = False,
                    reduce_range: bool = False,
                    batch_size: int = 32, preprocess: bool = True, progress: bool = False) -> dict[str, Any]:
    """Write a QDQ int8 copy of ``fp32_path`` at ``out_path``, calibrated on ``calib_x``; return its settings."""
    import onnx

    q = _quantization()
    if method not in CALIBRATION_METHODS:
        raise InputError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if activation not in ("int8", "uint8"):
        raise InputError(f"activation type must be int8 or uint8, got {activation!r}")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lightcl-quant-") as td:
        src = fp32_path
        if preprocess:
            # shape inference + graph optimisation first, as onnxruntime recommends before quantizing
            shape_inference = require("onnxruntime.quantization.shape_inference",
                                      needed_for="--int8's graph preprocessing", install=_ORT_INSTALL)
            pre = Path(td) / "pre.onnx"
            shape_inference.quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            src = pre
        reader = make_calibration_reader(input_name, calib_x, batch_size, progress)
        cal = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}[method]
        q.quantize_static(
            str(src), str(out_path), reader, quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
            activation_type=q.QuantType.QInt8 if activation == "int8" else q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8, calibrate_method=cal, reduce_range=reduce_range,
            extra_options={"ActivationSymmetric": bool(symmetric_activations), "WeightSymmetric": True},
        )
    model = onnx.load(str(out_path))
    ops = [n.op_type for n in model.graph.node]
    return {"format": "QDQ", "tool": "onnxruntime.quantization.quantize_static", "calibration": method,
            "per_channel": per_channel, "activation_type": activation, "weight_type": "int8",
            "symmetric_activations": bool(symmetric_activations), "reduce_range": bool(reduce_range),
            "calib_batch_size": batch_size,
            "calib_images": int(calib_x.shape[0]), "preprocessed": preprocess,
            "quantize_linear_nodes": ops.count("QuantizeLinear"), "dequantize_linear_nodes": ops.count("DequantizeLinear"),
            "seconds": round(time.perf_counter() - t0, 3)}


@torch.no_grad()
def int8_report(fp32_path: str | Path, int8_path: str | Path, head: torch.nn.Module, x: torch.Tensor,
                y: torch.Tensor | None = None) -> dict[str, Any]:
    """Compare int8 and fp32 extractors on held-out images: feature cosine and whole-model top-1 agreement."""
    f32 = run_session(ort_session(fp32_path), x)
    i8 = run_session(ort_session(int8_path), x)
    a, b = f32.flatten(1), i8.flatten(1)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    head.eval()
    p32 = head(f32).argmax(1)
    p8 = head(i8).argmax(1)
    rep = {"heldout": int(x.shape[0]), "feature_cosine_mean": float(cos.mean()), "feature_cosine_min": float(cos.min()),
           "feature_max_abs_diff": float((f32 - i8).abs().max()),
           "top1_agreement": float((p32 == p8).float().mean())}
    if y is not None:
        rep["top1_accuracy_fp32"] = float((p32 == y).float().mean())
        rep["top1_accuracy_int8"] = float((p8 == y).float().mean())
    return rep


@register_artefact("int8", order=20, files="frozen.int8.onnx", needs=("onnx",), requires=lambda: _quantization())
def build_int8(b: Build, o: Int8Options) -> None:
    """frozen.int8.onnx: static QDQ calibrated on ``o.calib_size`` real images, then checked against fp32 on the
    held-out images (:class:`AgreementError` below ``o.min_agreement`` unless ``o.force``: nothing written)."""
    im, fp32, int8 = b.images, b.dir / "frozen.onnx", b.dir / "frozen.int8.onnx"
    x_cal = im.calib(o.calib_size)
    calib_desc = im.calib_desc.format(n=x_cal.shape[0])
    b.say(f"int8: static QDQ quantization calibrated on {calib_desc}")
    qinfo = quantize_frozen(fp32, int8, x_cal, progress=b.progress, **o.settings)
    rep = int8_report(fp32, int8, b.head, im.x_test, im.y_test)
    rep.update(quantization=qinfo, calib_images=calib_desc, heldout_images=im.heldout_desc,
               min_agreement=o.min_agreement, forced=bool(o.force and rep["top1_agreement"] < o.min_agreement))
    b.meta["int8"] = rep
    b.say(f"int8: feature cosine {rep['feature_cosine_mean']:.4f} (min {rep['feature_cosine_min']:.4f}), "
          f"top-1 agreement with fp32 {rep['top1_agreement']:.4f} on {rep['heldout']} held-out images")
    if rep["top1_agreement"] < o.min_agreement and not o.force:
        raise AgreementError(
            f"int8 top-1 agreement with fp32 is {rep['top1_agreement']:.4f} < --min-agreement "
            f"{o.min_agreement:g} (feature cosine {rep['feature_cosine_mean']:.4f}); nothing written. "
            "Use --force to keep it anyway, or more --calib-size")
