"""Build TensorRT engines ("plans") for the frozen part, with the TensorRT Python API (8.x and 10.x).

A plan is tied to the TensorRT version and the GPU it was built on, so its file name says what it
depends on: ``frozen.<precision>.trt<version>.sm<major><minor>.<sha256(frozen.onnx)[:16]>.plan``.

Build settings: explicit batch (the only mode in 10.x; a creation flag in 8.x), one optimisation
profile for batch 1..``max_batch`` (opt = max/2), a workspace limit (``set_memory_pool_limit`` from
8.4, ``max_workspace_size`` before), a timing cache file kept per TensorRT version and GPU in the
cache directory (reused across builds), TF32 off for fp32 plans (so fp32 means fp32), and for int8 an
entropy calibrator (``IInt8EntropyCalibrator2``) fed with real images as torch CUDA tensors plus a
calibration profile and a calibration cache. (Implicit int8 calibration is deprecated from TensorRT
10.1 in favour of explicit QDQ models, but still works.)

The plan is the ``tensorrt`` kind of the artefact registry (:mod:`.artefacts`): built with the export
(``lightcl export CKPT --tensorrt``), or added later to a finished export on the device it will run on
(:func:`add_plan_to_export`, ``lightcl export --add-plan DIR [--fp16|--int8] [--max-batch N]``).

NOT exercised here: this machine has no GPU and ``tensorrt`` cannot be installed on it, so building a real plan
(:func:`build_plan`, the calibrator, :func:`plan_parity`, and the swap of :func:`add_plan_to_export` once a plan
is built) never ran in CI. The code follows NVIDIA's documented Python API and the 8.x->10.x migration guide;
what is tested, with the real CLI in a subprocess: "TensorRT is missing -> exit 3, one line", and
``--add-plan`` refusing a missing path, a symbolic link, a FIFO, a file and a directory that is not an export.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from lightcl.data.tasks import real_images
from lightcl.engine import paths
from lightcl.engine.errors import InputError, LightCLError, MissingDependencyError
from lightcl.engine.export_dir import load_export_meta
from lightcl.engine.fileio import sha256_file, write_bytes_atomic
from lightcl.engine.optional import require

from .artefacts import Build, Images, PlanOptions, add_artefact, existing_export, register_artefact

PRECISIONS = ("fp32", "fp16", "int8")


def require_tensorrt():
    """Import ``tensorrt`` and check for a CUDA device, or raise MissingDependencyError (exit 3, one line)."""
    trt = require("tensorrt", needed_for="a TensorRT plan (--tensorrt, --add-plan: NVIDIA TensorRT's Python package)",
                  install="it comes with JetPack on Jetson, or `pip install tensorrt` on a machine with an NVIDIA GPU")
    if not torch.cuda.is_available():
        raise MissingDependencyError("a TensorRT plan (--tensorrt, --add-plan) needs a CUDA device, and torch sees none "
                                     f"(torch {torch.__version__}, cuda build {torch.version.cuda})")
    return trt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def plan_filename(trt_version: str, capability: str, precision: str, onnx_sha256: str) -> str:
    return f"frozen.{precision}.trt{trt_version}.sm{capability}.{onnx_sha256[:16]}.plan"


def default_cache_dir() -> Path:
    """Timing and calibration caches: ``cache_dir("tensorrt")`` (``$LIGHTCL_CACHE`` or ~/.cache/lightcl;
    an empty variable counts as unset, so no cache lands in the current directory)."""
    return paths.cache_dir("tensorrt")


def _make_calibrator(trt, x: torch.Tensor, batch_size: int, cache_path: Path, device: torch.device):
    """Entropy calibrator over real images; device buffers are torch CUDA tensors (no pycuda)."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            n = (x.shape[0] // batch_size) * batch_size or x.shape[0]
            self.batches = [x[i:i + batch_size] for i in range(0, n, batch_size)]
            self.i = 0
            self.current: torch.Tensor | None = None  # keep the device buffer alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0])

        def get_batch(self, names, *args):
            if self.i >= len(self.batches):
                return None
            self.current = self.batches[self.i].to(device, dtype=torch.float32).contiguous()
            torch.cuda.current_stream(device).synchronize()
            self.i += 1
            return [int(self.current.data_ptr())]

        def read_calibration_cache(self, *args):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            write_bytes_atomic(cache_path, bytes(cache))

    return Calibrator()


def build_plan(onnx_path: str | Path, out_dir: str | Path, *, precision: str = "fp32", max_batch: int = 32,
               workspace_mib: int = 1024, calib_x: torch.Tensor | None = None, calib_batch: int = 32,
               cache_dir: str | Path | None = None, parity_x: torch.Tensor | None = None,
               parity_ref: torch.Tensor | None = None, device: int | None = None, progress: bool = True,
               trt=None) -> dict[str, Any]:
    """Build and serialise a plan for ``onnx_path`` into ``out_dir``; return its ``meta["tensorrt"]`` entry."""
    trt = trt or require_tensorrt()
    if precision not in PRECISIONS:
        raise InputError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if max_batch < 1:
        raise InputError(f"--max-batch must be >= 1, got {max_batch}")
    if precision == "int8" and (calib_x is None or calib_x.shape[0] == 0):
        raise InputError("an int8 TensorRT plan needs calibration images")
    dev = torch.device("cuda", torch.cuda.current_device() if device is None else device)
    props = torch.cuda.get_device_properties(dev)
    cc = f"{props.major}{props.minor}"
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    onnx_sha = sha256_file(onnx_path)
    cache_root = Path(cache_dir).expanduser().absolute() if cache_dir else default_cache_dir()
    cache_root.mkdir(parents=True, exist_ok=True)
    timing_cache_path = cache_root / f"timing.trt{trt.__version__}.sm{cc}.cache"
    major = trt_major(trt)

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    with torch.cuda.device(dev):
        builder = trt.Builder(logger)
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise LightCLError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {errs} "
                               "(for TensorRT 8.2 export with --profile jetson-nano, opset 13)")
        inp = network.get_input(0)
        in_name, chw = inp.name, tuple(int(v) for v in inp.shape[1:])
        config = builder.create_builder_config()
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
        else:  # TensorRT < 8.4
            config.max_workspace_size = int(workspace_mib) << 20
        opt = max(1, max_batch // 2)
        profile = builder.create_optimization_profile()
        profile.set_shape(in_name, (1, *chw), (opt, *chw), (max_batch, *chw))
        config.add_optimization_profile(profile)
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        if precision in ("fp16", "int8") and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        calib_info = None
        if precision == "int8":
            if not builder.platform_has_fast_int8:
                raise MissingDependencyError(f"{props.name} (sm_{cc}) has no fast int8 in TensorRT; use --fp16")
            config.set_flag(trt.BuilderFlag.INT8)
            bs = min(calib_batch, calib_x.shape[0])
            calib_cache = cache_root / f"calib.{onnx_sha[:16]}.n{calib_x.shape[0]}.cache"
            config.int8_calibrator = _make_calibrator(trt, calib_x, bs, calib_cache, dev)
            cprof = builder.create_optimization_profile()
            cprof.set_shape(in_name, (bs, *chw), (bs, *chw), (bs, *chw))
            config.set_calibration_profile(cprof)
            calib_info = {"calibrator": "IInt8EntropyCalibrator2", "images": int(calib_x.shape[0]), "batch": bs,
                          "cache": str(calib_cache)}
        timing = config.create_timing_cache(timing_cache_path.read_bytes() if timing_cache_path.is_file() else b"")
        config.set_timing_cache(timing, False)
        if progress:
            print(f"[export] tensorrt {trt.__version__}: building on {props.name} (sm_{cc}), this can take minutes",
                  file=sys.stderr, flush=True)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise LightCLError(f"TensorRT {trt.__version__} failed to build a {precision} plan for {onnx_path.name}")
        write_bytes_atomic(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    name = plan_filename(trt.__version__, cc, precision, onnx_sha)
    write_bytes_atomic(out_dir / name, bytes(serialized))
    entry: dict[str, Any] = {
        "file": name, "precision": precision, "trt_version": trt.__version__, "compute_capability": cc,
        "gpu": props.name, "max_batch": int(max_batch), "opt_batch": opt, "workspace_mib": int(workspace_mib),
        "onnx": onnx_path.name, "onnx_sha256": onnx_sha, "build_s": round(time.perf_counter() - t0, 3),
        "timing_cache": str(timing_cache_path), "explicit_batch": True,
        "api": "named tensors" if major >= 10 else "bindings (8.x) / named tensors (>= 8.5)",
    }
    if calib_info:
        entry["calibration"] = calib_info
    if parity_x is not None and parity_ref is not None:
        entry["parity"] = plan_parity(out_dir, entry, parity_x, parity_ref, dev)
    return entry


def plan_parity(out_dir: Path, entry: dict, x: torch.Tensor, ref: torch.Tensor, dev: torch.device) -> dict[str, Any]:
    """Run the new plan through the engine's TensorRT extractor and compare with torch (recorded, not enforced)."""
    from lightcl.engine.extractors.tensorrt_backend import TensorRTExtractor

    fake_meta = {"frozen_id": entry["onnx_sha256"], "feature_shape": list(ref.shape[1:]),
                 "input_shape": list(x.shape[1:]), "tensorrt": [entry], "files": {entry["file"]: None}}
    ext = TensorRTExtractor(out_dir, fake_meta, dev, plan=entry["file"])
    n = min(x.shape[0], entry["max_batch"])
    got = ext(x[:n].to(dev)).float().cpu()
    torch.cuda.synchronize(dev)
    d = (got - ref[:n].cpu()).abs()
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()), "batch": int(n)}


@register_artefact("tensorrt", order=40, files="frozen.<precision>.trt<version>.sm<cc>.<sha16>.plan",
                   needs=("onnx",), requires=require_tensorrt, later=True)
def build_tensorrt(b: Build, o: PlanOptions) -> None:
    """A plan from ``frozen.onnx`` into ``meta["tensorrt"]`` (a plan of the same name is replaced). With the
    model's halves at hand (at export time) its parity against torch is recorded too."""
    if o.precision not in PRECISIONS:
        raise InputError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got {o.precision!r}")
    im = b.images
    parity_x = parity_ref = None
    if b.frozen is not None and im.x_par is not None:
        parity_x = im.x_par
        with torch.no_grad():
            parity_ref = b.frozen(parity_x)
    calib_x = None
    if o.precision == "int8":
        if im.calib is None:
            raise InputError("an int8 TensorRT plan needs calibration images")
        calib_x = im.calib(max(int(o.calib_size), 1))
    b.say(f"tensorrt: building a {o.precision} plan, batch 1..{o.max_batch}, workspace {o.workspace_mib} MiB")
    entry = build_plan(b.dir / "frozen.onnx", b.dir, precision=o.precision, max_batch=o.max_batch,
                       workspace_mib=o.workspace_mib, calib_x=calib_x, cache_dir=o.cache_dir, parity_x=parity_x,
                       parity_ref=parity_ref, progress=b.progress)
    b.meta["tensorrt"] = [p for p in b.meta.get("tensorrt") or [] if p.get("file") != entry["file"]] + [entry]
    b.say(f"tensorrt: wrote {entry['file']} in {entry['build_s']:.1f} s")


def add_plan_to_export(export_dir: str | Path, options: PlanOptions | None = None, data_path: str | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Build a plan on this machine for the finished export ``export_dir`` and add it (``lightcl export
    --add-plan``): the directory is checked (no link, FIFO or non-export; every file against its sha256), TensorRT
    is required (exit 3, one line) before any work, and the new version is swapped in atomically with meta.json
    updated; files lightcl did not write are carried over, never deleted. Returns the plan's ``meta`` entry.

    An int8 plan calibrates on ``options.calib_size`` ("auto": 256) training images of the export's dataset;
    graph exports (``lightcl.export.intake``) record none, so they take int8 plans at export time only.
    No parity run here (the export's torch model is not at hand): the entry has none."""
    o = options or PlanOptions()
    d = existing_export(export_dir)
    meta = load_export_meta(d, verify=False)  # add_artefact verifies every file before it copies them
    images = Images()
    if o.precision == "int8":
        if not meta.get("dataset"):  # graph exports (lightcl.export.intake) calibrate on the user's images
            raise InputError(f"export {d} records no dataset to calibrate an int8 plan on; build it at "
                             "export time (lightcl export ... --tensorrt --int8 --images DIR)")
        n = 256 if o.calib_size in (None, "auto") else int(o.calib_size)
        if n < 1:
            raise InputError(f"--calib-size must be >= 1, got {n}")
        o.calib_size = n
        images.calib = lambda k: real_images(meta["dataset"], "train", k, meta["normalization"], data_path, seed=2,
                                             input_shape=meta["input_shape"], resize=meta.get("resize"))[0]
    say = (lambda msg: print(f"[export] {msg}", file=sys.stderr, flush=True)) if progress else None
    new = add_artefact(d, "tensorrt", o, images, progress=progress, say=say)
    return new["tensorrt"][-1]
