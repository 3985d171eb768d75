"""``lightcl export``: split a checkpoint, export the frozen part to ONNX, check parity, write the directory.

Output (written atomically: a temporary sibling directory renamed into place only when every check
passed, so a failed export leaves the previous one untouched)::

    DIR/frozen.onnx          frozen part, eval-mode BN folded, dynamic batch axis "batch"
    DIR/frozen.safetensors   the same weights + block specs, for the torch backend on the device
    DIR/head.safetensors     trainable deep part + classifier (engine.head.Head)
    DIR/frozen.int8.onnx     --int8: static QDQ int8 (onnxruntime.quantization)
    DIR/frozen.*.plan        --tensorrt: TensorRT engine(s) for this GPU
    DIR/meta.json            format lightcl-export/2, shapes, normalisation, exporter/opset/profile,
                             versions, parity figures, int8 report, sha256 of every file, frozen_id
                             (covers frozen.onnx, frozen.safetensors, frozen.int8.onnx: engine.export_dir)

Profiles:

* ``default``: ``torch.onnx.export(dynamo=True)`` (torch.export-based, the maintained exporter),
  opset 18, dynamic batch axis, example batch 2 (batch 1 would let torch.export specialise it).
* ``jetson-nano``: the legacy TorchScript exporter at opset 13, because the Jetson Nano's last
  JetPack (4.6, TensorRT 8.2) parses ONNX opsets <= 13 only.

Parity: torch (the split's eval-mode frozen part) and onnxruntime run the same batch of REAL
images from the checkpoint's dataset (test split); max and mean abs diff go into meta.json and
the export fails (:class:`ParityError`, non-zero exit) when the max exceeds ``atol``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from lightcl.data.tasks import real_images
from lightcl.engine.errors import InputError, LightCLError, StateError
from lightcl.engine.export_dir import EXPORT_FORMAT, META_NAME, OLD_FORMATS, frozen_id_of, owned_names
from lightcl.engine.extractors.ort_backend import import_onnxruntime
from lightcl.engine.fileio import atomic_directory, read_json, recover_directory, sha256_file, write_json_atomic
from lightcl.engine.optional import require
from lightcl.engine.frozen import load_frozen, save_frozen

from . import quantize  # called as quantize.X: tests patch the module's functions
from .checkpoint import checkpoint_paths, load_checkpoint
from .ort_run import ort_session, run_session
from .tensorrt_build import build_plan, require_tensorrt
from .zoo import DEFAULT_INPUT_SIZE, default_split, split_backbone, split_points

INPUT_NAME, OUTPUT_NAME = "input", "features"
EXAMPLE_BATCH = 2
PARITY_BATCH = 64
HELDOUT_BATCH = 256

PROFILES: dict[str, dict[str, Any]] = {
    "default": {
        "exporter": "dynamo", "opset": 18,
        "reason": "torch.onnx.export(dynamo=True): torch.export-based exporter, opset 18, dynamic batch axis",
    },
    "jetson-nano": {
        "exporter": "legacy", "opset": 13,
        "reason": "Jetson Nano's last JetPack (4.6) ships TensorRT 8.2, whose ONNX parser accepts opset <= 13; "
                  "the dynamo exporter emits opset >= 18, so the legacy TorchScript exporter is used at opset 13",
    },
}


class ParityError(LightCLError):
    """The exported graph does not reproduce PyTorch within the tolerance."""


class AgreementError(LightCLError):
    """The int8 model disagrees with fp32 on too many held-out images (override with --force)."""


def _progress(enabled: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if enabled:
            print(f"[export] {msg}", file=sys.stderr, flush=True)

    return say


# ---------------------------------------------------------------------------------------------- export
@contextlib.contextmanager
def _quiet_exporter():
    """The exporters print progress to stdout and warn about deprecations; keep the CLI output clean."""
    names = ["torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes", "onnxscript"]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for n, lvl in saved.items():
            logging.getLogger(n).setLevel(lvl)


def export_onnx(frozen: torch.nn.Module, path: str | Path, profile: str = "default",
                input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Export ``frozen`` (eval mode) to ``path`` with the profile's exporter; return what was done.
    ``input_shape`` None: the zoo's default ``[H, W]`` with the first block's input channels (callers with a
    checkpoint pass its ``input_size``)."""
    import onnx

    if input_shape is None:
        blocks = getattr(frozen, "blocks", None)
        cin = getattr(blocks[0], "cin", DEFAULT_INPUT_SIZE[0]) if blocks is not None and len(blocks) else DEFAULT_INPUT_SIZE[0]
        input_shape = (int(cin), *DEFAULT_INPUT_SIZE[1:])

    if profile not in PROFILES:
        raise InputError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    prof = PROFILES[profile]
    frozen.eval()
    example = torch.zeros(EXAMPLE_BATCH, *input_shape)
    t0 = time.perf_counter()
    with _quiet_exporter():
        if prof["exporter"] == "dynamo":
            require("onnxscript", needed_for="profile 'default' (torch.onnx.export(dynamo=True))",
                    install="pip install onnxscript")
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            torch.onnx.export(frozen, (example,), str(path), dynamo=True, opset_version=prof["opset"],
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), optimize=True, verify=False, external_data=False)
        else:
            torch.onnx.export(frozen, (example,), str(path), dynamo=False, opset_version=prof["opset"],
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL)
    seconds = time.perf_counter() - t0
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != prof["opset"]:
        raise LightCLError(f"exporter wrote opset {opset}, profile {profile!r} needs {prof['opset']}")
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    if dim0.HasField("dim_value"):
        raise LightCLError(f"exported input has a fixed batch of {dim0.dim_value}: the batch axis must be dynamic")
    ops = sorted({n.op_type for n in model.graph.node})
    if "BatchNormalization" in ops:
        raise LightCLError("exported graph still holds BatchNormalization: eval-mode BN was not folded")
    return {"exporter": prof["exporter"], "opset": opset, "profile": profile, "reason": prof["reason"],
            "export_seconds": round(seconds, 3), "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
            "batch_axis": dim0.dim_param or "dynamic", "example_batch": EXAMPLE_BATCH, "ops": ops,
            "nodes": len(model.graph.node), "ir_version": model.ir_version}


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    d = (a - b).abs()
    scale = b.abs().max().item()
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "max_rel_diff": float(d.max() / max(scale, 1e-12)), "reference_max_abs": float(scale)}


@torch.no_grad()
def check_parity(frozen: torch.nn.Module, head: torch.nn.Module, onnx_path: Path, frozen_st: Path,
                 x: torch.Tensor, y: torch.Tensor, atol: float, images: str) -> dict[str, Any]:
    """torch vs onnxruntime on the same real batch; also the device's torch rebuild and batch-1 runs."""
    frozen.eval()
    ref = frozen(x)
    sess = ort_session(onnx_path)
    got = run_session(sess, x, batch=x.shape[0])
    rep: dict[str, Any] = {**_diff(got, ref), "atol": atol, "batch": int(x.shape[0]), "images": images}
    # the dynamic batch axis really works: batch 1 and an odd batch give the same numbers
    singles = torch.cat([run_session(sess, x[i:i + 1], 1) for i in range(min(4, x.shape[0]))])
    odd = run_session(sess, x[: min(7, x.shape[0])], 7)
    rep["batch1_max_abs_diff"] = float((singles - ref[: singles.shape[0]]).abs().max())
    rep["batch7_max_abs_diff"] = float((odd - ref[: odd.shape[0]]).abs().max())
    # the torch backend rebuilds the frozen part from frozen.safetensors on the device: same numbers
    net, _ = load_frozen(frozen_st)
    rep["torch_rebuild_max_abs_diff"] = float((net(x) - ref).abs().max())
    head.eval()
    logits_ref = head(ref)
    logits_onnx = head(got)
    rep["top1_agreement"] = float((logits_ref.argmax(1) == logits_onnx.argmax(1)).float().mean())
    rep["top1_accuracy_torch"] = float((logits_ref.argmax(1) == y).float().mean())
    rep["top1_accuracy_onnx"] = float((logits_onnx.argmax(1) == y).float().mean())
    worst = max(rep["max_abs_diff"], rep["batch1_max_abs_diff"], rep["batch7_max_abs_diff"],
                rep["torch_rebuild_max_abs_diff"])
    rep["passed"] = bool(worst <= atol)
    return rep


def _versions() -> dict[str, str | None]:
    import onnx

    v: dict[str, str | None] = {"torch": torch.__version__, "onnx": onnx.__version__, "python": sys.version.split()[0],
                                "platform": platform.platform()}
    for mod in ("onnxruntime", "onnxscript", "safetensors", "tensorrt"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:
            v[mod] = None
    try:
        from lightcl import __version__ as lv

        v["lightcl"] = lv
    except Exception:
        pass
    return v


def _readable(d: Path) -> None:
    """Temp files/dirs are created 0600/0700; an export is meant to be copied to devices: honour the umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(d, 0o755 & ~mask)
    for p in d.iterdir():
        if p.is_file():
            os.chmod(p, 0o644 & ~mask)


def _check_out_dir(out: Path) -> None:
    """atomic_directory replaces ``out``: only ever replace an empty dir or an earlier export (whose files
    lightcl did not write are kept)."""
    recover_directory(out)  # an export killed between its renames is put back before we look
    if out.is_symlink():
        raise InputError(f"--out {out} is a symbolic link; pass the real directory")
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    meta = out / META_NAME
    if meta.is_file():
        try:
            if read_json(meta).get("format") in (EXPORT_FORMAT, *OLD_FORMATS):
                return
        except LightCLError:
            pass
    raise InputError(f"--out {out} exists and is not a lightcl export; refusing to replace it (choose a new path)")


def _check_finite_weights(model: torch.nn.Module, ckpt_path) -> None:
    """NaN/Inf weights export with "agreement 1.0" (argmax of NaN logits agrees with itself) and then
    learn nothing: refuse them here, naming the first tensor."""
    bad = [(k, int((~torch.isfinite(v)).sum())) for k, v in model.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(f"checkpoint {ckpt_path} has non-finite weights ({bad[0][1]} NaN/Inf values in {bad[0][0]}"
                         f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}); refusing to export it")


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, split: str | None = None, profile: str = "default",
                      atol: float = 1e-4, int8: bool = False, calib_size: int | str = "auto", min_agreement: float = 0.98,
                      force: bool = False, data_path: str | None = None, progress: bool = True,
                      tensorrt: bool = False, trt_precision: str | None = None, max_batch: int = 32,
                      workspace_mib: int = 1024, trt_cache_dir: str | Path | None = None,
                      int8_options: dict[str, Any] | None = None, sparsity: str | float | None = None,
                      recover_epochs: int | None = None, round_channels: int | None = None) -> dict[str, Any]:
    """Split ``ckpt_path`` at ``split`` (None: its backbone's default split) and write an export directory at
    ``out_dir``; return its meta.

    Raises :class:`ParityError` when ONNX and torch differ by more than ``atol`` and
    :class:`AgreementError` when the int8 model's top-1 agreement with fp32 is below
    ``min_agreement`` (unless ``force``); in both cases nothing is written.
    ``tensorrt=True`` builds a TensorRT plan (``trt_precision`` "fp32"|"fp16"|"int8", default int8
    when ``int8`` else fp32) and needs ``tensorrt`` + CUDA: without them it raises
    :class:`MissingDependencyError` (exit code 3) before doing any work.
    ``sparsity`` ("authors" or a float in (0, 1)) prunes output channels physically before the split
    (:mod:`lightcl.export.prune`), then fine-tunes ``recover_epochs`` epochs (default
    ``prune.DEFAULT_RECOVER_EPOCHS``) on the pretraining data; ``meta["sparsity"]`` reports both.
    ``round_channels`` (with ``sparsity``) rounds every kept channel count to a multiple of it.
    ``calib_size`` "auto" (default): :func:`quantize.resolve_calib_size` (1024 images for a pruned export, 256 dense).
    """
    say = _progress(progress)
    if profile not in PROFILES:
        raise InputError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if not atol > 0:
        raise InputError(f"--atol must be > 0, got {atol}")
    if not 0.0 <= min_agreement <= 1.0:
        raise InputError(f"--min-agreement must be in [0, 1], got {min_agreement}")
    calib_size = quantize.resolve_calib_size(calib_size, pruned=sparsity is not None)
    if int8 and calib_size < 1:
        raise InputError(f"--calib-size must be >= 1, got {calib_size}")
    if sparsity is not None:
        from .prune import DEFAULT_RECOVER_EPOCHS, PruneError, parse_round_channels, parse_sparsity

        sparsity = parse_sparsity(sparsity)
        round_channels = parse_round_channels(round_channels)
        recover_epochs = DEFAULT_RECOVER_EPOCHS if recover_epochs is None else int(recover_epochs)
        if recover_epochs < 0:
            raise PruneError(f"--recover-epochs must be >= 0, got {recover_epochs}")
    elif recover_epochs is not None:
        raise InputError("--recover-epochs needs --sparsity")
    elif round_channels is not None:
        raise InputError("--round-channels needs --sparsity")
    trt_mod = None
    if tensorrt:
        trt_mod = require_tensorrt()  # fails fast, exit 3, before any work
        trt_precision = trt_precision or ("int8" if int8 else "fp32")
    import_onnxruntime()  # parity needs it: fail fast with exit 3
    out = Path(out_dir).absolute()
    _check_out_dir(out)

    t_start = time.perf_counter()
    model, ck = load_checkpoint(ckpt_path)
    _check_finite_weights(model, ckpt_path)
    prune_rep = None
    if sparsity is not None:
        from .prune import prune_for_export

        model, prune_rep = prune_for_export(model, ck, sparsity, recover_epochs=recover_epochs,
                                            data_path=data_path, say=say, round_channels=round_channels)
    if split is None:  # the backbone's registry entry says where it splits by default
        split = default_split(model.arch)
    try:
        frozen, head = split_backbone(model, split)
    except ValueError as e:
        raise InputError(str(e)) from None
    input_shape = tuple(int(v) for v in ck.get("input_size", model.input_size))
    with torch.no_grad():
        feature_shape = [int(v) for v in frozen(torch.zeros(1, *input_shape)).shape[1:]]
    norm = ck.get("normalization")
    if not norm or "mean" not in norm or "std" not in norm:
        raise StateError(f"checkpoint {ckpt_path} records no normalisation: cannot feed real images")
    dataset = ck.get("dataset")
    if not dataset:
        raise StateError(f"checkpoint {ckpt_path} records no dataset: parity needs real images")
    if input_shape[-1] != input_shape[-2]:  # TODO(lead): C1's resize_to_input takes non-square shapes
        raise InputError(f"input size {list(input_shape)}: parity images are square resizes here")
    size = int(input_shape[-1])  # parity and calibration images at the model's own input size
    say(f"loading real {dataset} images for parity{' and int8 calibration' if int8 else ''}")
    n_heldout = HELDOUT_BATCH if int8 else PARITY_BATCH
    x_test, y_test = real_images(dataset, "test", n_heldout, norm, data_path, seed=1, size=size)
    x_par, y_par = x_test[:PARITY_BATCH], y_test[:PARITY_BATCH]
    st_path, js_path = checkpoint_paths(ckpt_path)

    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "arch": model.arch, "width": model.width, "split": split, "split_points": split_points(model),
        "frozen_blocks": list(frozen.block_names), "head_blocks": [b["name"] for b in head.config["blocks"]],
        "input_shape": list(input_shape), "feature_shape": feature_shape,
        "normalization": {"mean": list(norm["mean"]), "std": list(norm["std"]), "scale": norm.get("scale", "0-1")},
        "dataset": dataset, "classes": list(ck.get("classes", [])), "num_classes": int(model.num_classes),
        "profile": profile,
        "checkpoint": {"path": str(Path(ckpt_path).absolute()), "weights_sha256": ck.get("sha256"),
                       "meta_sha256": sha256_file(js_path), "dataset": dataset,
                       "test_accuracy": ck.get("test_accuracy"), "epochs": ck.get("epochs")},
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if prune_rep is not None:
        meta["sparsity"] = prune_rep

    with atomic_directory(out, owned=owned_names) as tmp:
        onnx_path = tmp / "frozen.onnx"
        prof = PROFILES[profile]
        say(f"exporting frozen part ({', '.join(frozen.block_names)}) with the {prof['exporter']} exporter, "
            f"opset {prof['opset']}")
        info = export_onnx(frozen, onnx_path, profile, input_shape)
        meta.update(exporter=info["exporter"], opset=info["opset"], onnx=info)
        meta["profile_reason"] = info["reason"]
        onnx_sha = sha256_file(onnx_path)
        save_frozen(tmp / "frozen.safetensors", frozen, list(frozen.block_names),
                    extra={"onnx_sha256": onnx_sha, "feature_shape": feature_shape, "input_shape": list(input_shape),
                           "split": split, "arch": model.arch, "width": model.width})
        head.save(tmp / "head.safetensors")
        say(f"parity: torch vs onnxruntime on {x_par.shape[0]} real {dataset} test images")
        par = check_parity(frozen, head, onnx_path, tmp / "frozen.safetensors", x_par, y_par, atol,
                           images=f"{dataset} test, {x_par.shape[0]} images (seed 1)")
        meta["parity"] = par
        say(f"parity: max abs diff {par['max_abs_diff']:.3g}, mean {par['mean_abs_diff']:.3g} (atol {atol:g}); "
            f"top-1 agreement {par['top1_agreement']:.4f}")
        if not par["passed"]:
            raise ParityError(
                f"ONNX export differs from PyTorch: max abs diff {par['max_abs_diff']:.3g} "
                f"(batch 1: {par['batch1_max_abs_diff']:.3g}, torch rebuild: {par['torch_rebuild_max_abs_diff']:.3g}) "
                f"> atol {atol:g}; nothing written")

        if int8:
            x_cal, _ = real_images(dataset, "train", calib_size, norm, data_path, seed=2, size=size)
            say(f"int8: static QDQ quantization calibrated on {x_cal.shape[0]} real {dataset} train images")
            qinfo = quantize.quantize_frozen(onnx_path, tmp / "frozen.int8.onnx", x_cal, progress=progress,
                                    **(int8_options or {}))
            rep = quantize.int8_report(onnx_path, tmp / "frozen.int8.onnx", head, x_test, y_test)
            rep.update(quantization=qinfo, calib_images=f"{dataset} train, {x_cal.shape[0]} images (seed 2)",
                       heldout_images=f"{dataset} test, {x_test.shape[0]} images (seed 1)",
                       min_agreement=min_agreement, forced=bool(force and rep["top1_agreement"] < min_agreement))
            meta["int8"] = rep
            say(f"int8: feature cosine {rep['feature_cosine_mean']:.4f} (min {rep['feature_cosine_min']:.4f}), "
                f"top-1 agreement with fp32 {rep['top1_agreement']:.4f} on {rep['heldout']} held-out images")
            if rep["top1_agreement"] < min_agreement and not force:
                raise AgreementError(
                    f"int8 top-1 agreement with fp32 is {rep['top1_agreement']:.4f} < --min-agreement "
                    f"{min_agreement:g} (feature cosine {rep['feature_cosine_mean']:.4f}); nothing written. "
                    "Use --force to keep it anyway, or more --calib-size")

        if profile == "jetson-nano":  # TensorRT 8.2's published operator list (export/trt_ops.py)
            from .trt_ops import check_export

            check_export(tmp, meta, say)

        if tensorrt:
            x_cal_trt = None
            with torch.no_grad():
                ref_par = frozen(x_par)
            if trt_precision == "int8":
                x_cal_trt, _ = real_images(dataset, "train", max(calib_size, 1), norm, data_path, seed=2, size=size)
            say(f"tensorrt: building a {trt_precision} plan, batch 1..{max_batch}, workspace {workspace_mib} MiB")
            entry = build_plan(onnx_path, tmp, precision=trt_precision, max_batch=max_batch,
                               workspace_mib=workspace_mib, calib_x=x_cal_trt, cache_dir=trt_cache_dir,
                               parity_x=x_par, parity_ref=ref_par, progress=progress, trt=trt_mod)
            meta["tensorrt"] = [entry]
            say(f"tensorrt: wrote {entry['file']} in {entry['build_s']:.1f} s")

        files = sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name != META_NAME and not p.name.startswith("."))
        meta["files"] = {name: sha256_file(tmp / name) for name in files}
        meta["frozen_id"] = frozen_id_of(meta["files"])  # every byte of the frozen part (engine.export_dir)
        meta["export_seconds"] = round(time.perf_counter() - t_start, 3)
        write_json_atomic(tmp / META_NAME, meta)
        _readable(tmp)
    say(f"wrote {out} ({', '.join(meta['files'])}) in {meta['export_seconds']:.1f} s")
    return meta


def summary_lines(meta: dict[str, Any], out_dir: str | Path) -> list[str]:
    par = meta["parity"]
    lines = [
        f"exported {meta['arch']} width {meta['width']} split {meta['split']} -> {out_dir}",
        f"  frozen.onnx: {meta['exporter']} exporter, opset {meta['opset']}, profile {meta['profile']}, "
        f"features {meta['feature_shape']}, frozen_id {meta['frozen_id'][:16]}",
        f"  parity on {par['batch']} real images: max abs diff {par['max_abs_diff']:.3g}, mean abs diff "
        f"{par['mean_abs_diff']:.3g} (atol {par['atol']:g}), top-1 agreement {par['top1_agreement']:.4f}",
    ]
    if meta.get("sparsity"):
        sp = meta["sparsity"]
        rec = sp.get("recovery") or {}
        rounded = f", kept channels rounded to multiples of {sp['round_channels']}" if sp.get("round_channels") else ""
        lines.append(f"  pruned ({sp['mode']}{rounded}): weight sparsity {sp['weight_sparsity']:.4f}, {sp['params_kept']:,} of "
                     f"{sp['params_dense']:,} parameters kept; pretraining test accuracy "
                     f"{rec.get('test_accuracy_pruned', float('nan')):.4f} pruned -> "
                     f"{rec.get('test_accuracy_recovered', float('nan')):.4f} after {rec.get('epochs', 0)} recovery epoch(s)")
    if "int8" in meta:
        r = meta["int8"]
        lines.append(f"  frozen.int8.onnx: feature cosine {r['feature_cosine_mean']:.4f} (min {r['feature_cosine_min']:.4f}), "
                     f"top-1 agreement {r['top1_agreement']:.4f} on {r['heldout']} held-out images"
                     + (" [FORCED below --min-agreement]" if r.get("forced") else ""))
    for e in meta.get("tensorrt", []) or []:
        lines.append(f"  {e['file']}: TensorRT {e['trt_version']}, sm_{e['compute_capability']}, {e['precision']}, "
                     f"batch 1..{e['max_batch']}")
    if meta.get("trt82_check"):
        from .trt_ops import summary

        lines.extend(f"  {summary(rep)}" for rep in meta["trt82_check"].values())
    return lines


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)


# real_images (lightcl.data.tasks) and ort_session/run_session (.ort_run) stay importable from here
__all__ = ["export_checkpoint", "export_onnx", "check_parity", "real_images", "ort_session", "run_session", "PROFILES",
           "ParityError", "AgreementError", "summary_lines"]
