"""Run an ONNX file on onnxruntime's CPU provider, in batches: what the export's parity check and the int8
report both need. Its own module so that ``onnx_export`` (which calls ``quantize``) and ``quantize`` share
it without importing each other."""
from __future__ import annotations

from pathlib import Path

import torch

from lightcl.engine.extractors.ort_backend import import_onnxruntime


def ort_session(path: str | Path, threads: int | None = None):
    """A CPU ``InferenceSession`` for ``path`` (onnxruntime missing: MissingDependencyError, exit 3)."""
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_session(sess, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """``sess`` over ``x`` in batches of ``batch``; the outputs concatenated."""
    outs = []
    name = sess.get_inputs()[0].name
    for i in range(0, x.shape[0], batch):
        outs.append(torch.from_numpy(sess.run(None, {name: x[i:i + batch].contiguous().numpy()})[0]))
    return torch.cat(outs)
