"""onnxruntime extractor: ``frozen.onnx`` (fp32) or ``frozen.int8.onnx`` (static QDQ int8).

CPU: ``session.run`` on a zero-copy numpy view of the input; the output array becomes a torch
tensor without a copy.

CUDA / TensorRT execution providers (onnxruntime-gpu): the session asks for the providers and then
reads back what it really got from ``session.get_providers()`` (``get_available_providers()`` lists
CUDA on machines without a GPU and the session silently falls back to CPU). Inputs and outputs are
bound with IO binding to torch CUDA tensors (``bind_input``/``bind_output`` with ``data_ptr()``), so
features never round-trip through the host. Ordering with torch: torch's current stream is
synchronised before the run (the input is complete), and ``run_with_iobinding`` returns after
onnxruntime has synchronised its own stream (the output is complete), so the features can be used
on any torch stream. TensorRT EP options are chosen by onnxruntime version (engine cache, timing
cache, explicit shape profile 1..max_batch).

What was exercised: the CPU provider (tests and benchmarks, onnxruntime 1.32). The CUDA/TensorRT
provider options and the IO-binding path were written against the documented API and have NOT
been run on a GPU in this repository's CI.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..allocator import release_free_heap
from ..errors import InputError, IntegrityError, MissingDependencyError, StateError
from ..export_dir import export_file
from ..fileio import read_buffer
from ..optional import require
from ..paths import cache_dir
from .base import BackendOptions, BaseExtractor, check_bool, check_choice, check_int, check_thread_option

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                   "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider"}
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}


INSTALL = "install it with pip install 'lightcl[ort]' (CPU) or 'lightcl[ort-gpu]' (CUDA/TensorRT), never both"


def import_onnxruntime():
    """``onnxruntime`` or :class:`MissingDependencyError` (exit 3) saying which extra to install."""
    return require("onnxruntime", needed_for="the onnxruntime backend", install=INSTALL)


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        num = "".join(ch for ch in part if ch.isdigit())
        out.append(int(num) if num else 0)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class OrtOptions(BackendOptions):
    """onnxruntime session options.

    ``threads``: intra-op threads (None: onnxruntime's default, one per physical core); ``inter_threads``
    (1); ``spin``: let worker threads busy-wait between runs (False: they sleep, which matters when the
    head trains in the same process); ``arena``: CPU memory arena + memory pattern (True);
    ``graph_optimization``: "all" | "extended" | "basic" | "disable"; ``log_severity``: onnxruntime's log
    level (3 = errors). On a CUDA device: ``providers`` (a sequence of "tensorrt" / "cuda"; default
    ("cuda",), and ("tensorrt", "cuda") under ``backend="auto"``), ``require_gpu`` (True: refuse a session
    that silently fell back to CPU), ``cuda_options`` (merged into the CUDA EP options), and for the
    TensorRT EP ``trt_cache_dir`` (default ``cache_dir("ort-trt", frozen_id[:16])``), ``trt_fp16``,
    ``trt_max_batch`` (profile 1..N), ``trt_workspace_mib``.
    """

    threads: Optional[int] = None
    inter_threads: int = 1
    spin: bool = False
    arena: bool = True
    graph_optimization: str = "all"
    providers: Optional[Tuple[str, ...]] = None
    trt_cache_dir: Optional[str] = None
    trt_fp16: bool = False
    trt_max_batch: int = 64
    trt_workspace_mib: int = 1024
    cuda_options: Optional[dict] = None
    log_severity: int = 3
    require_gpu: bool = True

    def validate(self) -> None:
        check_thread_option("threads", self.threads)
        check_thread_option("inter_threads", self.inter_threads)
        for name in ("spin", "arena", "trt_fp16", "require_gpu"):
            check_bool(name, getattr(self, name))
        check_choice("graph_optimization", self.graph_optimization, tuple(_OPT_LEVELS))
        if self.providers is not None:
            if isinstance(self.providers, str) or not all(isinstance(p, str) for p in self.providers):
                raise InputError(f"providers must be a sequence of names ('tensorrt', 'cuda', 'cpu'), "
                                 f"got {self.providers!r}")
            object.__setattr__(self, "providers", tuple(self.providers))
        check_int("trt_max_batch", self.trt_max_batch, 1, 1 << 16)
        check_int("trt_workspace_mib", self.trt_workspace_mib, 1, 1 << 20)
        check_int("log_severity", self.log_severity, 0, 4)
        if self.trt_cache_dir is not None and not isinstance(self.trt_cache_dir, (str, os.PathLike)):
            raise InputError(f"trt_cache_dir must be a path, got {type(self.trt_cache_dir).__name__}")
        if self.cuda_options is not None and not isinstance(self.cuda_options, dict):
            raise InputError(f"cuda_options must be a dict, got {type(self.cuda_options).__name__}")


class OrtExtractor(BaseExtractor):
    """onnxruntime session over ``frozen.onnx``: CPU provider, or CUDA / TensorRT EP with IO binding."""

    name = "ort"
    summary = "frozen.onnx in onnxruntime (CPU, CUDA EP or TensorRT EP)"
    Options = OrtOptions
    requires = ("onnxruntime",)
    install = INSTALL
    auto_rank = {"cpu": 0, "cuda": 1}
    file = "frozen.onnx"

    @classmethod
    def unavailable(cls, meta: dict[str, Any], device: torch.device) -> str | None:
        try:
            ort = import_onnxruntime()
        except MissingDependencyError:
            return "onnxruntime not importable"
        if device.type == "cuda" and not set(ort.get_available_providers()) & set(GPU_PROVIDERS):
            return "onnxruntime has no CUDA/TensorRT provider (CPU package)"
        return None

    @classmethod
    def auto_defaults(cls, device: torch.device) -> dict[str, Any]:
        return {"providers": ("tensorrt", "cuda")} if device.type == "cuda" else {}

    def _open(self, options: OrtOptions) -> None:
        export_dir, meta = self.export_dir, self.meta
        ort = import_onnxruntime()
        self.ort = ort
        path = export_file(export_dir, meta, self.file)
        self.threads, self.spin, self.arena = options.threads, options.spin, options.arena
        self.graph_optimization = options.graph_optimization

        so = ort.SessionOptions()
        if options.threads:
            so.intra_op_num_threads = int(options.threads)
        so.inter_op_num_threads = int(options.inter_threads)
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[options.graph_optimization])
        so.enable_cpu_mem_arena = self.arena
        so.enable_mem_pattern = self.arena
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.spin else "0")
        so.log_severity_level = int(options.log_severity)

        self.on_gpu = self.device.type == "cuda"
        self.requested = self._provider_list(options)
        # The session gets the verified bytes, never the path: the bytes checked are the bytes run, and an
        # external-data file beside the model (not covered by frozen_id) can never be read.
        try:
            model_bytes = bytes(read_buffer(path, f"export file {self.file}", max_bytes=2 << 30))
        except OSError as e:
            raise StateError(f"export {export_dir}: cannot read {self.file} ({e})") from None
        if hashlib.sha256(model_bytes).hexdigest() != meta["files"][self.file]:
            raise IntegrityError(f"export {export_dir}: {self.file} does not match its recorded sha256: the file is "
                                 "corrupt or was replaced")
        t0 = time.perf_counter()
        try:
            self.session = ort.InferenceSession(model_bytes, so, providers=self.requested)
            release_free_heap()  # the session's one-time temporaries (only with LIGHTCL_MALLOC=lean)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            first = " ".join(str(e).split())[:200]
            if self.on_gpu:
                raise MissingDependencyError(f"onnxruntime could not create a GPU session for {path.name}: {first}") from None
            msg = str(e).strip()
            if "Unsupported model IR version" in msg or "opset" in msg.lower():  # an old device onnxruntime
                detail = msg[msg.find("Unsupported"):] if "Unsupported" in msg else msg.splitlines()[-1][-120:]
                raise MissingDependencyError(
                    f"onnxruntime {ort.__version__} cannot read {path.name} ({' '.join(detail.split())[:160]}): "
                    "export with `--profile jetson-nano` (opset 13) for an older onnxruntime, or upgrade it") from None
            if "external" in first.lower():
                raise IntegrityError(f"export {export_dir}: {self.file} refers to external data files, which lightcl "
                                     "does not load (frozen_id covers the model file only): re-export it") from None
            raise IntegrityError(f"export {export_dir}: onnxruntime cannot load {self.file} ({first})") from None
        self.session_create_ms = (time.perf_counter() - t0) * 1e3
        del model_bytes
        self._release_model_bytes()
        # what the session really got: get_available_providers() lists CUDA on machines without a GPU
        self.providers: list[str] = list(self.session.get_providers())
        self.provider = self.providers[0] if self.providers else "none"
        if self.on_gpu and self.provider not in GPU_PROVIDERS and options.require_gpu:
            raise MissingDependencyError(
                f"device {self.device} asked for, but onnxruntime runs {self.provider} only "
                f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu matching your "
                "CUDA, without the CPU onnxruntime package")
        self.io_binding = self.on_gpu and self.provider in GPU_PROVIDERS
        if self.provider == "TensorrtExecutionProvider" and _version_tuple(ort.__version__) >= (1, 15):
            self.max_batch = options.trt_max_batch  # the explicit profile set in _provider_list
        self._check_signature(export_dir)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def _close(self) -> None:
        """onnxruntime frees a session (its weights, arena and thread pools) when the last reference goes."""
        self.session = None
        self.io_binding = False
        release_free_heap()

    def _release_model_bytes(self) -> None:
        """Drop the model file's bytes onnxruntime's Python session keeps (``InferenceSession._model_bytes``, "holding
        the memory indefinitely" by its own comment) only to re-create the session when an execution provider
        fails: on the CPU provider there is nothing to fall back to, so the copy is dead weight, the size of the
        weights (10.6 MiB of a width-64 export's update-step peak: docs/results/ledger.md, pass 4). The session
        itself holds its weights in its own buffers. GPU sessions keep the bytes (their fallback may need them)."""
        if self.on_gpu or getattr(self.session, "_model_bytes", None) is None:
            return
        if hasattr(self.session, "disable_fallback"):
            self.session.disable_fallback()  # a fallback would re-create the session from the bytes
        self.session._model_bytes = None

    @property
    def input_device(self) -> torch.device:
        return self.device if self.io_binding else torch.device("cpu")

    def _check_signature(self, export_dir) -> None:
        """The model must take float32 [N, *input_shape] and give float32 [N, *feature_shape], as meta.json says
        (a crafted model of another input size or dtype failed at the first batch with onnxruntime's report)."""
        ins, outs = self.session.get_inputs(), self.session.get_outputs()

        def dims(shape):
            return [d if isinstance(d, int) else None for d in shape]

        ok = len(ins) == 1 and len(outs) >= 1 and ins[0].type == "tensor(float)" and outs[0].type == "tensor(float)"
        if ok:
            di, do = dims(ins[0].shape), dims(outs[0].shape)
            ok = (len(di) == 1 + len(self.input_shape) and di[1:] in (list(self.input_shape), [None] * len(self.input_shape))
                  and len(do) == 1 + len(self.feature_shape)
                  and all(a is None or a == b for a, b in zip(do[1:], self.feature_shape)))
        if not ok:
            got = ", ".join(f"{i.name}: {i.type} {i.shape}" for i in ins)
            raise IntegrityError(f"export {export_dir}: {self.file} takes ({got}) but meta.json says float32 "
                                 f"[N, {', '.join(map(str, self.input_shape))}] -> [N, "
                                 f"{', '.join(map(str, self.feature_shape))}]")

    # ------------------------------------------------------------------ providers
    def _provider_list(self, options: OrtOptions) -> list:
        providers = options.providers
        if not self.on_gpu:
            if providers and any(_PROVIDER_NAMES.get(str(p).lower(), p) != "CPUExecutionProvider" for p in providers):
                raise InputError("GPU execution providers need device='cuda' (got device='cpu')")
            return ["CPUExecutionProvider"]
        idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", idx)
        version = _version_tuple(self.ort.__version__)
        out: list = []
        for p in (providers or ("cuda",)):
            name = _PROVIDER_NAMES.get(str(p).lower(), str(p))
            if name == "TensorrtExecutionProvider":
                cache = (Path(options.trt_cache_dir).expanduser().absolute() if options.trt_cache_dir
                         else cache_dir("ort-trt", self.frozen_id[:16]))
                cache.mkdir(parents=True, exist_ok=True)
                shape = "x".join(str(v) for v in self.input_shape)
                opts: dict[str, Any] = {
                    "device_id": idx,
                    "trt_max_workspace_size": int(options.trt_workspace_mib) << 20,
                    "trt_fp16_enable": options.trt_fp16,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache),
                }
                if version >= (1, 12):
                    opts["trt_timing_cache_enable"] = True
                if version >= (1, 16):
                    opts["trt_timing_cache_path"] = str(cache)
                if version >= (1, 15):
                    # one explicit profile for batch 1..max: no engine rebuild when the batch size changes
                    name_in, top = self._input_name_from_meta(), options.trt_max_batch
                    opts["trt_profile_min_shapes"] = f"{name_in}:1x{shape}"
                    opts["trt_profile_opt_shapes"] = f"{name_in}:{max(1, top // 2)}x{shape}"
                    opts["trt_profile_max_shapes"] = f"{name_in}:{top}x{shape}"
                out.append((name, opts))
            elif name == "CUDAExecutionProvider":
                opts = {"device_id": idx, "arena_extend_strategy": "kSameAsRequested",
                        "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": True}
                opts.update(options.cuda_options or {})
                out.append((name, opts))
            elif name == "CPUExecutionProvider":
                pass
            else:
                raise InputError(f"unknown onnxruntime provider {p!r} (use 'tensorrt', 'cuda' or 'cpu')")
        out.append("CPUExecutionProvider")
        return out

    def _input_name_from_meta(self) -> str:
        return str(self.meta.get("onnx", {}).get("input_name", "input"))

    # ------------------------------------------------------------------ run
    def _run(self, x: Tensor) -> Tensor:
        if self.io_binding:
            return self._run_cuda(x)
        (out,) = self.session.run([self.output_name], {self.input_name: x.contiguous().numpy()})
        return torch.from_numpy(out)

    def _run_cuda(self, x: Tensor) -> Tensor:  # pragma: no cover - needs onnxruntime-gpu and a GPU
        x = x.contiguous()
        out = torch.empty((x.shape[0], *self.feature_shape), dtype=torch.float32, device=self.device)
        io = self.session.io_binding()
        idx = self.device.index or 0
        io.bind_input(name=self.input_name, device_type="cuda", device_id=idx, element_type=np.float32,
                      shape=tuple(x.shape), buffer_ptr=x.data_ptr())
        io.bind_output(name=self.output_name, device_type="cuda", device_id=idx, element_type=np.float32,
                       shape=tuple(out.shape), buffer_ptr=out.data_ptr())
        # x may still be being written by kernels queued on torch's stream; onnxruntime uses its own.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(io)
        return out

    def info(self) -> dict[str, Any]:
        return {**super().info(), "provider": self.provider, "providers": self.providers,
                "threads": self.threads, "spin": self.spin, "arena": self.arena,
                "graph_optimization": self.graph_optimization, "io_binding": self.io_binding, "file": self.file,
                "onnxruntime": self.ort.__version__}


class OrtInt8Extractor(OrtExtractor):
    """The same session over ``frozen.int8.onnx`` (static QDQ int8, written by ``lightcl export --int8``)."""

    name = "ort-int8"
    summary = "frozen.int8.onnx (static QDQ int8) in onnxruntime; export made with --int8"
    auto_rank = {}  # a lossy variant: only when asked for
    file = "frozen.int8.onnx"
