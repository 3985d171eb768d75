"""Native TensorRT extractor: a serialized plan from the export directory, torch CUDA tensors as buffers.

The plan is chosen from ``meta["tensorrt"]`` (written by ``lightcl export --tensorrt``): it must
have been built by this TensorRT version for this GPU's compute capability (plans are not portable
across either), and, if asked, at a given precision. Input and output buffers are torch CUDA
tensors; the work is enqueued on torch's *current* stream, so it is ordered with whatever torch
does before and after, and no pycuda is needed.

Two APIs, picked by what the installed TensorRT offers:

* TensorRT >= 8.5 (and 10.x, where it is the only one): named tensors —
  ``context.set_input_shape``, ``context.set_tensor_address``, ``context.execute_async_v3(stream)``.
* TensorRT 8.0-8.4 (JetPack 4.6 ships 8.2): bindings — ``engine.get_binding_index``,
  ``context.set_binding_shape``, ``context.execute_async_v2(bindings, stream)``.

NOT exercised: no test in this repository runs this module (``tensorrt`` cannot be installed on the
CPU-only machines where the suite runs, and no test is written for a GPU machine). It was written
against NVIDIA's documented Python API (8.x and the 8.x->10.x migration guide). What the tests do cover
is the refusal without TensorRT (``MissingDependencyError``, exit 3) and the template's checks, which
run before ``_run`` whatever the backend.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import torch
from torch import Tensor

from ..errors import InputError, MissingDependencyError, ShapeError, StateError
from ..export_dir import export_file
from ..optional import require
from .base import BackendOptions, BaseExtractor, check_choice

INSTALL = "it comes with JetPack on Jetson, or `pip install tensorrt` on a machine with an NVIDIA GPU"
PRECISIONS = ("fp32", "fp16", "int8")


def import_tensorrt():
    """``tensorrt`` or :class:`MissingDependencyError` (exit 3)."""
    return require("tensorrt", needed_for="the tensorrt backend", install=INSTALL)


def compute_capability(device: torch.device | int | None = None) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}{minor}"


def matching_plans(meta: dict[str, Any], trt_version: str, capability: str, precision: str | None = None) -> list[dict]:
    """Plans in ``meta["tensorrt"]`` usable with this TensorRT version and GPU (best precision first)."""
    order = {"int8": 0, "fp16": 1, "fp32": 2}
    plans = [p for p in meta.get("tensorrt", []) or []
             if p.get("trt_version") == trt_version and str(p.get("compute_capability")) == capability
             and (precision is None or p.get("precision") == precision)]
    return sorted(plans, key=lambda p: order.get(p.get("precision"), 9))


@dataclasses.dataclass(frozen=True)
class TensorRTOptions(BackendOptions):
    """``plan``: a plan file of the export by name (default: the best one built for this TensorRT and GPU);
    ``precision``: "fp32" | "fp16" | "int8", pick the plan of that precision."""

    plan: Optional[str] = None
    precision: Optional[str] = None

    def validate(self) -> None:
        if self.precision is not None:
            check_choice("precision", self.precision, PRECISIONS)
        if self.plan is not None and not isinstance(self.plan, str):
            raise InputError(f"plan must be the file name of a plan in the export, got {type(self.plan).__name__}")


class TensorRTExtractor(BaseExtractor):
    """A serialized TensorRT plan of the export, run on torch's current CUDA stream."""

    name = "tensorrt"
    summary = "a *.plan built for this GPU and TensorRT (lightcl export --tensorrt), torch CUDA buffers"
    Options = TensorRTOptions
    requires = ("tensorrt",)
    install = INSTALL
    auto_rank = {"cuda": 0}
    concurrent = False  # one execution context: input shape and addresses are its state

    @classmethod
    def unavailable(cls, meta: dict[str, Any], device: torch.device) -> str | None:
        try:
            trt = import_tensorrt()
        except MissingDependencyError:
            return "tensorrt not importable"
        cc = compute_capability(device)
        if not matching_plans(meta, trt.__version__, cc):
            return f"tensorrt: no plan for TensorRT {trt.__version__} on sm_{cc}"
        return None

    def _open(self, options: TensorRTOptions) -> None:  # pragma: no cover - needs TensorRT and a GPU
        export_dir, meta, plan, precision = self.export_dir, self.meta, options.plan, options.precision
        trt = import_tensorrt()
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise MissingDependencyError("the tensorrt backend needs a CUDA device (torch.cuda.is_available() is False "
                                         f"or device={self.device})")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.trt = trt
        cc = compute_capability(self.device)
        if plan is None:
            plans = matching_plans(meta, trt.__version__, cc, precision)
            if not plans:
                have = ", ".join(f"{p.get('file')} (TensorRT {p.get('trt_version')}, sm_{p.get('compute_capability')}, "
                                 f"{p.get('precision')})" for p in meta.get("tensorrt", []) or []) or "none"
                raise StateError(
                    f"no TensorRT plan in {export_dir} for TensorRT {trt.__version__} on sm_{cc}"
                    f"{' at ' + precision if precision else ''} (plans: {have}); build one on this machine with "
                    f"`lightcl export --add-plan {export_dir}` or `lightcl export CKPT --tensorrt`")
            entry = plans[0]
        else:
            entry = next((p for p in meta.get("tensorrt", []) or [] if p.get("file") == plan), None)
            if entry is None:
                raise StateError(f"{plan} is not a TensorRT plan of export {export_dir}")
        self.plan_entry = entry
        self.file = entry["file"]
        self.max_batch = int(entry.get("max_batch", 1))
        path = export_file(export_dir, meta, self.file)

        t0 = time.perf_counter()
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            runtime = trt.Runtime(self.logger)
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise StateError(f"TensorRT {trt.__version__} could not deserialize {self.file} (built by "
                                 f"{entry.get('trt_version')} for sm_{entry.get('compute_capability')})")
            self.context = self.engine.create_execution_context()
        self.session_create_ms = (time.perf_counter() - t0) * 1e3
        self._runtime = runtime  # the runtime must outlive the engine
        self.named_tensors = hasattr(self.engine, "num_io_tensors") and hasattr(self.context, "execute_async_v3")
        if self.named_tensors:
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        else:
            names = [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)]
            inputs = [n for i, n in enumerate(names) if self.engine.binding_is_input(i)]
            outputs = [n for i, n in enumerate(names) if not self.engine.binding_is_input(i)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise StateError(f"{self.file}: expected one input and one output tensor, got {inputs} / {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        if not self.named_tensors:
            self.in_idx = self.engine.get_binding_index(self.input_name)
            self.out_idx = self.engine.get_binding_index(self.output_name)
            self.n_bindings = self.engine.num_bindings

    def _close(self) -> None:  # pragma: no cover - needs TensorRT and a GPU
        """The execution context before its engine, the engine before the runtime that made it (TensorRT's
        destruction order; Polygraphy's ``deactivate`` does the same)."""
        self.context = None
        self.engine = None
        self._runtime = None

    def _run(self, x: Tensor) -> Tensor:  # pragma: no cover - needs TensorRT and a GPU
        n = int(x.shape[0])  # the template checked 1 <= n <= max_batch and moved x to this device
        x = x.contiguous()
        out = torch.empty((n, *self.feature_shape), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device)
        shape = tuple(x.shape)
        if self.named_tensors:
            if not self.context.set_input_shape(self.input_name, shape):
                raise ShapeError(f"TensorRT refused input shape {shape}")
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            ok = self.context.execute_async_v3(stream.cuda_stream)
        else:
            if not self.context.set_binding_shape(self.in_idx, shape):
                raise ShapeError(f"TensorRT refused input shape {shape}")
            bindings = [0] * self.n_bindings
            bindings[self.in_idx] = x.data_ptr()
            bindings[self.out_idx] = out.data_ptr()
            ok = self.context.execute_async_v2(bindings=bindings, stream_handle=stream.cuda_stream)
        if not ok:
            raise RuntimeError(f"TensorRT failed to enqueue {self.file}")
        # x and out were allocated by torch's caching allocator on this stream: reuse of their memory
        # by later torch work is stream-ordered after this enqueue, so no synchronisation is needed.
        return out

    def info(self) -> dict[str, Any]:
        return {**super().info(), "provider": f"TensorRT {self.trt.__version__}", "file": self.file,
                "precision": self.plan_entry.get("precision"),
                "api": "named tensors (execute_async_v3)" if self.named_tensors else "bindings (execute_async_v2)",
                "threads": None, "stream": "torch current stream"}

