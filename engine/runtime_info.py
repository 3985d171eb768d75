"""What really runs here: library versions, execution providers that work, devices.

``onnxruntime.get_available_providers()`` lists what the wheel was built with (onnxruntime-gpu lists
CUDA/TensorRT on a machine without a GPU); only a real session's ``get_providers()`` says what runs.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
import platform
import sys


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:
        return None


def providing_distributions(module: str) -> list[str]:
    """Which installed distributions ship top-level ``module`` (onnxruntime vs onnxruntime-gpu).

    What Python 3.10's ``importlib.metadata.packages_distributions`` does, written out for 3.8."""
    names = set()
    for dist in md.distributions():
        top = (dist.read_text("top_level.txt") or "").split()
        if not top:  # no top_level.txt: infer from the installed files
            top = [f.parts[0].split(".")[0] for f in (dist.files or []) if f.suffix in (".py", ".so", "")]
        if module in top:
            names.add(dist.metadata["Name"])
    return sorted(names)


def _tiny_onnx_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def working_providers() -> dict[str, str]:
    """For each provider the wheel lists: 'ok' if a session really gets it, else why not."""
    try:
        import onnxruntime as ort
    except Exception as e:
        return {"onnxruntime": f"not importable ({e.__class__.__name__})"}
    out = {}
    model = _tiny_onnx_model()
    ort.set_default_logger_severity(4)
    for prov in ort.get_available_providers():
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            s = ort.InferenceSession(model, opts, providers=[prov])
            got = s.get_providers()
            out[prov] = "ok" if got and got[0] == prov else f"falls back to {got[0] if got else 'nothing'}"
        except Exception as e:
            out[prov] = f"fails: {str(e).splitlines()[0][:120]}"
    return out


def extractor_backends() -> dict[str, str]:
    """Each registered extractor backend: what it runs, or which module it still needs and how to get it.
    (Whether a CUDA session really works is ``working_providers``'s question.)"""
    from .extractors.registry import backend_classes

    out = {}
    for name, cls in backend_classes().items():
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        out[name] = f"needs {', '.join(missing)}: {cls.install}" if missing else f"ok: {cls.summary}"
    return out


def cuda_devices() -> list[dict]:
    try:
        import torch
    except Exception:
        return []
    if not torch.cuda.is_available():
        return []
    devs = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devs.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                     "memory_gib": round(p.total_memory / 2**30, 1)})
    return devs


def collect() -> dict:
    ort_dists = providing_distributions("onnxruntime")
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": _version("torch"),
        "torch_threads": None,
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "onnxruntime_package": ", ".join(ort_dists) if ort_dists else None,
        "tensorrt": _version("tensorrt"),
        "safetensors": _version("safetensors"),
        "cuda_devices": cuda_devices(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch_cuda_build"] = torch.version.cuda
    except Exception:
        pass
    if len(ort_dists) > 1:
        info["warning"] = (f"{' and '.join(ort_dists)} are installed together; they share one module folder and "
                           "clobber each other. Uninstall all and reinstall exactly one.")
    return info
