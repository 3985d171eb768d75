"""Feature extractors: the frozen part as an inference engine.

One protocol (:class:`Extractor`), one template (:class:`~.base.BaseExtractor`: the public call checks,
the backend runs; docs/backends.md), one registry (:func:`register_backend`), one loader
(:func:`load_extractor`), four built-in backends:

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
``frozen_bn="train"`` forces ``torch`` (no other runtime can update BN statistics): an option set that
only one backend can honour (``Options.exclusive()``) leaves auto no other choice.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import InputError, LightCLError, MissingDependencyError
from .registry import AUTO, FALLBACK, backend_classes, backend_names, check_name, choices, get_backend, register_backend

if TYPE_CHECKING:
    import torch
    from torch import Tensor

log = logging.getLogger("lightcl")

__all__ = ["Extractor", "load_extractor", "BACKENDS", "resolve_device", "register_backend", "get_backend",
           "backend_names", "options_for", "int8_unusable", "LEARNING_AUTO"]


def __getattr__(name: str):
    # BACKENDS follows the registry: a backend registered later is in it too
    if name == "BACKENDS":
        return choices()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    import torch

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


def options_for(backend: str, **wanted: Any) -> dict[str, Any]:
    """The part of ``wanted`` that ``backend`` takes (``None`` values dropped), for callers that hold settings
    for every backend (threads, spin, ...) and must not switch on backend names to build options. For
    ``"auto"``: what any backend takes (:func:`load_extractor` gives each candidate its own part)."""
    check_name(backend)
    if backend == AUTO:
        names = set().union(*(c.Options.names() for c in backend_classes().values()))
        return {k: v for k, v in wanted.items() if k in names and v is not None}
    return get_backend(backend).Options.pick(wanted)


#: what ``backend="auto"`` does for learning (``load_extractor(..., learning=True)``), for ``lightcl info``
LEARNING_AUTO = ("on CPU, ort-int8 first where the export's int8 agreement check passed (not kept with --force), "
                 "else the order above: the fastest extractor that passed its check")


def int8_unusable(meta: dict) -> str | None:
    """Why the export's int8 model is not a first-class learning extractor, or None: it must exist and have
    passed its top-1 agreement check against fp32 at export time (a model kept with ``--force`` did not)."""
    i8 = meta.get("int8") or {}
    if "frozen.int8.onnx" not in (meta.get("files") or {}):
        return "ort-int8: no frozen.int8.onnx (export made without --int8)"
    agree, need = i8.get("top1_agreement"), i8.get("min_agreement")
    if i8.get("forced") or agree is None or need is None or float(agree) < float(need):
        return f"ort-int8: its agreement check did not pass (top-1 {agree} < {need}, kept with --force)"
    return None


def load_extractor(export_dir: str | Path, backend: str = "auto", device: str | torch.device = "cpu",
                   learning: bool = False, **options: Any) -> Extractor:
    """Verify the export (sha256 of every file against ``meta.json``) and open its frozen part.

    ``backend``: ``"auto"`` (see the module docstring for the order) or a registered backend
    (:func:`backend_names`). ``options`` are the fields of that backend's ``Options`` dataclass
    (``frozen_bn``, ``threads``, ``spin``, ``arena``, ``providers``, ...; docs/backends.md), checked before
    anything is opened: an option the backend does not take is one line naming the ones it does. With
    ``"auto"`` each candidate gets the options it takes, and an option no backend takes is an error.

    ``learning=True`` (the learner's extractor; ``"auto"`` only): on CPU the int8 model comes first where the
    export's int8 agreement check passed (:data:`LEARNING_AUTO`): the fastest extractor that passed its check.
    Prediction keeps fp32 unless asked.

    Raises :class:`IntegrityError` naming a tampered or foreign file, :class:`StateError` for a
    missing one, :class:`MissingDependencyError` (exit code 3) when an explicitly requested
    runtime is not installed or does not get the device.
    """
    from ..allocator import apply_lean_malloc
    from ..export_dir import load_export_meta

    check_name(backend)
    if not isinstance(export_dir, (str, os.PathLike)):
        raise InputError(f"export_dir must be a path, got {type(export_dir).__name__}")
    if backend != AUTO:
        cls = get_backend(backend)
        opts = cls.Options.build(backend, options)  # checked before the export is read
        meta = load_export_meta(export_dir, verify=True)
        # LIGHTCL_MALLOC, else the export's device profile (jetson-nano: lean), before any runtime allocates
        apply_lean_malloc(profile=meta.get("profile"))
        ext = cls(export_dir, meta, resolve_device(device), opts)
        log.info("extractor: %s", _describe(ext, f"backend={backend} requested"))
        return ext

    classes = backend_classes()
    known = set().union(*(c.Options.names() for c in classes.values()))
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown extractor option(s): {', '.join(unknown)} (valid for some backend: "
                         f"{', '.join(sorted(known))})")
    given = {name: cls.Options.build(name, cls.Options.pick(options)) for name, cls in classes.items()}
    meta = load_export_meta(export_dir, verify=True)
    apply_lean_malloc(profile=meta.get("profile"))
    dev = resolve_device(device)
    skipped: list[str] = []
    pinned = [(name, why) for name, o in given.items() for why in [o.exclusive()] if why]
    if pinned:
        chosen, why = pinned[0]
        skipped.append(why)
        candidates: list[str] = []
    else:
        chosen = FALLBACK
        ranked = [(c.auto_rank[dev.type], n) for n, c in classes.items() if dev.type in c.auto_rank and n != FALLBACK]
        candidates = [n for _, n in sorted(ranked)]
        if learning and dev.type == "cpu" and "ort-int8" in classes:
            why_not = int8_unusable(meta)
            if why_not:
                skipped.append(why_not)
            else:
                candidates.insert(0, "ort-int8")
    for name in candidates:
        cls = classes[name]
        reason = cls.unavailable(meta, dev)
        if reason:
            skipped.append(reason)
            continue
        try:
            opts = cls.Options.build(name, {**cls.auto_defaults(dev), **cls.Options.pick(options)})
            ext = cls(export_dir, meta, dev, opts)
        except LightCLError as e:
            skipped.append(f"{name}: {e}")
            continue
        log.info("extractor: %s", _describe(ext, _why(name, dev, skipped)))
        return ext
    ext = classes[chosen](export_dir, meta, dev, given[chosen])
    log.info("extractor: %s", _describe(ext, _why(chosen, dev, skipped)))
    return ext


def _why(chosen: str, dev: torch.device, skipped: list[str]) -> str:
    classes = backend_classes()
    ranked = sorted((c.auto_rank[dev.type], n) for n, c in classes.items() if dev.type in c.auto_rank and n != FALLBACK)
    order = " > ".join([n for _, n in ranked] + [FALLBACK])
    why = f"auto on {dev.type}, order {order}" + (" (learning: ort-int8 first, its check passed)"
                                                   if chosen == "ort-int8" else "")
    return why + (f"; skipped: {'; '.join(skipped)}" if skipped else f"; {chosen} is the first that works")


def _describe(ext, why: str) -> str:
    i = ext.info()
    bits = [f"backend={i.get('backend')}", f"provider={i.get('provider')}", f"device={i.get('device')}"]
    if i.get("threads") is not None:
        bits.append(f"threads={i['threads']}")
    if i.get("frozen_bn"):
        bits.append(f"frozen_bn={i['frozen_bn']}")
    return f"{' '.join(bits)} file={i.get('file')} frozen_id={ext.frozen_id[:12]} ({why})"
