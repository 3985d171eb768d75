"""Feature extractors: the frozen part as an inference engine.

One protocol (:class:`Extractor`), one loader (:func:`load_extractor`), three runtimes:

=============  ==========================================  ===============================================
backend        runs                                        needs
=============  ==========================================  ===============================================
``torch``      ``frozen.safetensors`` rebuilt as eager      torch (always there); the reference, and the only
               PyTorch (``frozen_bn="eval"|"train"``)       one with the paper's drifting BN (``"train"``)
``ort``        ``frozen.onnx`` in onnxruntime               ``onnxruntime`` (CPU) or ``onnxruntime-gpu``
               (CPU, CUDA EP or TensorRT EP)                 (CUDA/TensorRT EP; IO binding to torch tensors)
``ort-int8``   ``frozen.int8.onnx`` (static QDQ int8)       ``onnxruntime``; export made with ``--int8``
``tensorrt``   a ``*.plan`` built for this GPU + TRT        ``tensorrt`` + a CUDA device; export made with
                                                            ``--tensorrt`` on this kind of machine
=============  ==========================================  ===============================================

``backend="auto"`` fallback order (first that works wins; one log line on logger ``"lightcl"``
says which and why the ones before it were skipped):

1. ``tensorrt`` — if the device is CUDA, ``tensorrt`` imports, and the export has a plan for this
   TensorRT version and GPU;
2. ``ort`` with the TensorRT/CUDA execution provider — if the device is CUDA and a real session gets
   one of them (read from ``session.get_providers()``);
3. ``ort`` on CPU — if the device is CPU and ``onnxruntime`` imports;
4. ``torch`` — always (on the requested device).

``device="auto"`` means ``"cuda"`` when ``torch.cuda.is_available()`` else ``"cpu"``. On a CUDA device
the CPU-only onnxruntime is skipped (torch on the GPU beats it and keeps features on the device).
``frozen_bn="train"`` forces ``torch`` (no other runtime can update BN statistics).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import InputError, LightCLError, MissingDependencyError
from ..export_dir import load_export_meta
from ..validate import check_threads

log = logging.getLogger("lightcl")

BACKENDS = ("auto", "torch", "ort", "ort-int8", "tensorrt")

__all__ = ["Extractor", "load_extractor", "BACKENDS", "resolve_device"]


@runtime_checkable
class Extractor(Protocol):
    """``extractor(x)``: float32 ``[N, 3, H, W]`` (normalised images) -> float32 features
    ``[N, *feature_shape]`` on the extractor's device, without autograd history."""

    frozen_id: str
    meta: dict
    feature_shape: tuple

    def __call__(self, x: Tensor) -> Tensor: ...

    def info(self) -> dict: ...


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"bad device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError(f"device {device!r} asked for, but torch sees no CUDA device "
                                     f"(torch {torch.__version__}, cuda build {torch.version.cuda})")
    return dev


def _classes():
    from .ort_backend import OrtExtractor
    from .tensorrt_backend import TensorRTExtractor
    from .torch_backend import TorchExtractor

    return {"torch": TorchExtractor, "ort": OrtExtractor, "ort-int8": OrtExtractor, "tensorrt": TensorRTExtractor}


def _make(backend: str, export_dir, meta, device, options: dict):
    cls = _classes()[backend]
    kwargs = dict(options)
    if backend in ("ort", "ort-int8"):
        kwargs["int8"] = backend == "ort-int8"
    return cls(export_dir, meta, device, **kwargs)


def _check_options(backend: str, options: dict) -> None:
    allowed = _classes()[backend].OPTIONS
    bad = sorted(set(options) - allowed)
    if bad:
        raise InputError(f"unknown option(s) for backend {backend!r}: {', '.join(bad)} "
                         f"(accepted: {', '.join(sorted(allowed))})")


def load_extractor(export_dir: str | Path, backend: str = "auto", device: str | torch.device = "cpu",
                   **options: Any) -> Extractor:
    """Verify the export (sha256 of every file against ``meta.json``) and open its frozen part.

    ``backend``: ``"auto"`` (see the module docstring for the order), ``"torch"``, ``"ort"``,
    ``"ort-int8"`` or ``"tensorrt"``. ``options`` go to the backend (``frozen_bn``, ``threads``,
    ``spin``, ``arena``, ``providers``, ...); with ``"auto"`` each candidate gets the options it
    understands, and an option no backend understands is an error.

    Raises :class:`IntegrityError` naming a tampered or foreign file, :class:`StateError` for a
    missing one, :class:`MissingDependencyError` (exit code 3) when an explicitly requested
    runtime is not installed or does not get the device.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown extractor backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if not isinstance(export_dir, (str, os.PathLike)):
        raise InputError(f"export_dir must be a path, got {type(export_dir).__name__}")
    for key in ("threads", "inter_threads"):
        check_threads(options.get(key), key)  # bounded by this machine's CPUs
    meta = load_export_meta(export_dir, verify=True)
    dev = resolve_device(device)
    if backend != "auto":
        _check_options(backend, options)
        ext = _make(backend, export_dir, meta, dev, options)
        log.info("extractor: %s", _describe(ext, f"backend={backend} requested"))
        return ext

    known = set().union(*(c.OPTIONS for c in _classes().values()))
    bad = sorted(set(options) - known)
    if bad:
        raise InputError(f"unknown extractor option(s): {', '.join(bad)}")
    skipped: list[str] = []
    candidates: list[tuple[str, dict]] = []
    if options.get("frozen_bn", "eval") == "train":
        skipped.append("frozen_bn='train' needs torch")
    elif dev.type == "cuda":
        candidates += [("tensorrt", {}), ("ort", {"providers": options.get("providers", ("tensorrt", "cuda"))})]
    else:
        candidates.append(("ort", {}))
    for name, extra in candidates:
        opts = {k: v for k, v in {**options, **extra}.items() if k in _classes()[name].OPTIONS}
        if name == "tensorrt" and not _tensorrt_ready(meta, dev, skipped):
            continue
        if name == "ort" and not _ort_ready(dev, skipped):
            continue
        try:
            ext = _make(name, export_dir, meta, dev, opts)
        except LightCLError as e:
            skipped.append(f"{name}: {e}")
            continue
        log.info("extractor: %s", _describe(ext, _why(name, dev, skipped)))
        return ext
    opts = {k: v for k, v in options.items() if k in _classes()["torch"].OPTIONS}
    ext = _make("torch", export_dir, meta, dev, opts)
    log.info("extractor: %s", _describe(ext, _why("torch", dev, skipped)))
    return ext


def _why(chosen: str, dev: torch.device, skipped: list[str]) -> str:
    order = "tensorrt > ort-gpu > torch" if dev.type == "cuda" else "ort > torch"
    why = f"auto on {dev.type}, order {order}"
    return why + (f"; skipped: {'; '.join(skipped)}" if skipped else f"; {chosen} is the first that works")


def _tensorrt_ready(meta: dict, dev: torch.device, skipped: list[str]) -> bool:
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        skipped.append("tensorrt not importable")
        return False
    from .tensorrt_backend import compute_capability, matching_plans

    cc = compute_capability(dev)
    if not matching_plans(meta, trt.__version__, cc):
        skipped.append(f"tensorrt: no plan for TensorRT {trt.__version__} on sm_{cc}")
        return False
    return True


def _ort_ready(dev: torch.device, skipped: list[str]) -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        skipped.append("onnxruntime not importable")
        return False
    if dev.type == "cuda":
        avail = set(ort.get_available_providers())
        if not avail & {"TensorrtExecutionProvider", "CUDAExecutionProvider"}:
            skipped.append("onnxruntime has no CUDA/TensorRT provider (CPU package)")
            return False
    return True


def _describe(ext, why: str) -> str:
    i = ext.info()
    bits = [f"backend={i.get('backend')}", f"provider={i.get('provider')}", f"device={i.get('device')}"]
    if i.get("threads") is not None:
        bits.append(f"threads={i['threads']}")
    if i.get("frozen_bn"):
        bits.append(f"frozen_bn={i['frozen_bn']}")
    return f"{' '.join(bits)} file={i.get('file')} frozen_id={ext.frozen_id[:12]} ({why})"
