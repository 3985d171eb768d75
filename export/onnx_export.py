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

Each file kind is an entry of the artefact registry (:mod:`lightcl.export.artefacts`); this module registers
``onnx`` and holds the one writer of a fresh export directory (:func:`write_export`), which every intake uses:
the checkpoint intake here (:func:`export_checkpoint`), any module in :mod:`lightcl.export.intake`.

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
import logging
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from lightcl.data.tasks import real_images
from lightcl.engine.errors import InputError, LightCLError, StateError
from lightcl.engine.export_dir import EXPORT_FORMAT, META_NAME, OLD_FORMATS, owned_names
from lightcl.engine.extractors.ort_backend import import_onnxruntime
from lightcl.engine.fileio import atomic_directory, read_json, recover_directory, sha256_file
from lightcl.engine.optional import require
from lightcl.engine.frozen import load_frozen, save_frozen

from . import quantize  # called as quantize.X: tests patch the module's functions
from .artefacts import (PROFILE_NAMES, ArtefactKind, Build, ExportOptions, Images, OnnxOptions, build_all, finish,
                        options_from, preflight, register_artefact)
from .checkpoint import checkpoint_paths, load_checkpoint
from .ort_run import ort_session, run_session
from .quantize import AgreementError  # noqa: F401  (importable from here, as it always was)
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


assert tuple(PROFILES) == PROFILE_NAMES  # the options check names them without importing torch


class ParityError(LightCLError):
    """The exported graph does not reproduce PyTorch within the tolerance."""


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
    ``input_shape`` None: the zoo's default ``[H, W]`` with the first block's input channels (every intake
    passes its model's own input shape; the default is kept for callers with a zoo FrozenNet)."""
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
                 x: torch.Tensor, y: torch.Tensor | None, atol: float, images: str,
                 relative: bool = False) -> dict[str, Any]:
    """torch vs onnxruntime on the same real batch; also the device's torch rebuild and batch-1 runs.
    ``relative``: the tolerance is ``atol * max(1, max |reference feature|)`` (any model's features, whatever
    their scale; the zoo's checkpoints keep the absolute ``atol``)."""
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
    if y is not None:  # images without labels of the model's own classes: agreement only
        rep["top1_accuracy_torch"] = float((logits_ref.argmax(1) == y).float().mean())
        rep["top1_accuracy_onnx"] = float((logits_onnx.argmax(1) == y).float().mean())
    worst = max(rep["max_abs_diff"], rep["batch1_max_abs_diff"], rep["batch7_max_abs_diff"],
                rep["torch_rebuild_max_abs_diff"])
    tol = atol * max(1.0, rep["reference_max_abs"]) if relative else atol
    if relative:
        rep["tolerance"] = tol
    rep["passed"] = bool(worst <= tol)
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


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, split: str | None = None,
                      options: ExportOptions | None = None, **kw: Any) -> dict[str, Any]:
    """Split ``ckpt_path`` at ``split`` (None: its backbone's default split) and write an export directory at
    ``out_dir``; return its meta.

    ``options`` (:class:`~lightcl.export.artefacts.ExportOptions`) or the flat keywords it has always taken
    (``profile``, ``atol``, ``int8``, ``calib_size``, ``min_agreement``, ``force``, ``int8_options``, ``tensorrt``,
    ``trt_precision``, ``max_batch``, ``workspace_mib``, ``trt_cache_dir``, ``sparsity``, ``recover_epochs``,
    ``round_channels``, ``data_path``, ``progress``: :meth:`ExportOptions.from_kwargs`).
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
    opts = check_options(options_from(options, kw, "export_checkpoint"))
    say = _progress(opts.progress)
    plan = opts.kinds()
    chosen = preflight(plan)  # a missing runtime (TensorRT, CUDA) fails fast, exit 3, before any work
    import_onnxruntime()  # parity needs it: fail fast with exit 3
    out = Path(out_dir).absolute()
    _check_out_dir(out)

    t_start = time.perf_counter()
    model, ck = load_checkpoint(ckpt_path)
    _check_finite_weights(model, ckpt_path)
    prune_rep = None
    if opts.prune is not None:
        from .prune import prune_for_export

        p = opts.prune
        model, prune_rep = prune_for_export(model, ck, p.sparsity, recover_epochs=p.recover_epochs,
                                            data_path=opts.data_path, say=say, round_channels=p.round_channels)
    if split is None:  # the backbone's registry entry says where it splits by default
        split = default_split(model.arch)
    try:
        frozen, head = split_backbone(model, split)
    except ValueError as e:
        raise InputError(str(e)) from None
    input_shape = tuple(int(v) for v in ck.get("input_size", model.input_size))
    with torch.no_grad():
        feature_shape = [int(v) for v in frozen(torch.zeros(1, *input_shape)).shape[1:]]
    images = _checkpoint_images(ck, ckpt_path, input_shape, opts, say)
    meta = _checkpoint_meta(model, ck, ckpt_path, split, frozen, head, input_shape, feature_shape, opts.onnx.profile)
    if prune_rep is not None:
        meta["sparsity"] = prune_rep
    b = Build(out, meta, images, say, opts.progress, frozen=frozen, head=head, input_shape=input_shape,
              frozen_extra={"split": split, "arch": model.arch, "width": model.width})
    return write_export(b, chosen, plan, t_start=t_start)


def check_options(opts: ExportOptions) -> ExportOptions:
    """Every option checked, ``calib_size`` "auto" resolved and the pruning values parsed, before any work
    (here, not in :mod:`.artefacts`: the registry imports none of the kinds' modules)."""
    opts.onnx.check()
    for o in (opts.int8, opts.tensorrt):
        if o is not None:
            o.calib_size = quantize.resolve_calib_size(o.calib_size, pruned=opts.prune is not None)
    if opts.int8 is not None and opts.int8.calib_size < 1:
        raise InputError(f"--calib-size must be >= 1, got {opts.int8.calib_size}")
    if opts.prune is not None:
        from .prune import DEFAULT_RECOVER_EPOCHS, PruneError, parse_round_channels, parse_sparsity

        p = opts.prune
        p.sparsity = parse_sparsity(p.sparsity)
        p.round_channels = parse_round_channels(p.round_channels)
        p.recover_epochs = DEFAULT_RECOVER_EPOCHS if p.recover_epochs is None else int(p.recover_epochs)
        if p.recover_epochs < 0:
            raise PruneError(f"--recover-epochs must be >= 0, got {p.recover_epochs}")
    return opts


def _checkpoint_images(ck: dict[str, Any], ckpt_path, input_shape: tuple[int, ...], opts: ExportOptions,
                       say: Callable[[str], None]) -> Images:
    """Real images of the checkpoint's dataset at its own input size (not 32), stretched as the zoo's datasets
    are: test split (seed 1) for parity and the held-out checks, train split (seed 2) for calibration."""
    norm, dataset, data_path = ck.get("normalization"), ck.get("dataset"), opts.data_path
    if not norm or "mean" not in norm or "std" not in norm:
        raise StateError(f"checkpoint {ckpt_path} records no normalisation: cannot feed real images")
    if not dataset:
        raise StateError(f"checkpoint {ckpt_path} records no dataset: parity needs real images")
    int8 = opts.int8 is not None
    say(f"loading real {dataset} images for parity{' and int8 calibration' if int8 else ''}")
    x_test, y_test = real_images(dataset, "test", HELDOUT_BATCH if int8 else PARITY_BATCH, norm, data_path, seed=1,
                                 input_shape=input_shape, resize={"rule": "stretch"})

    def calib(n: int) -> torch.Tensor:
        return real_images(dataset, "train", n, norm, data_path, seed=2, input_shape=input_shape,
                           resize={"rule": "stretch"})[0]

    return Images(calib, f"{dataset} train, {{n}} images (seed 2)", x_test[:PARITY_BATCH], y_test[:PARITY_BATCH],
                  x_test, y_test, f"{dataset} test, {min(PARITY_BATCH, x_test.shape[0])} images (seed 1)",
                  f"{dataset} test, {x_test.shape[0]} images (seed 1)")


def _checkpoint_meta(model, ck: dict[str, Any], ckpt_path, split: str, frozen, head, input_shape: tuple[int, ...],
                     feature_shape: list[int], profile: str) -> dict[str, Any]:
    """meta.json of a checkpoint export, before the artefacts add their figures."""
    norm, dataset = ck["normalization"], ck["dataset"]
    _, js_path = checkpoint_paths(ckpt_path)
    return {
        "format": EXPORT_FORMAT,
        "arch": model.arch, "width": model.width, "split": split, "split_points": split_points(model),
        "frozen_blocks": list(frozen.block_names), "head_blocks": [b["name"] for b in head.config["blocks"]],
        "input_shape": list(input_shape), "feature_shape": feature_shape,
        "normalization": {"mean": list(norm["mean"]), "std": list(norm["std"]), "scale": norm.get("scale", "0-1")},
        "dataset": dataset, "classes": list(ck.get("classes", [])), "num_classes": int(model.num_classes),
        "resize": {"rule": "stretch"},  # the zoo's datasets are stretched to the input size (CONTRACT.md)
        "model": {"intake": "checkpoint", "arch": model.arch, "factory": None, "split": split, "classifier": "fc"},
        "profile": profile,
        "checkpoint": {"path": str(Path(ckpt_path).absolute()), "weights_sha256": ck.get("sha256"),
                       "meta_sha256": sha256_file(js_path), "dataset": dataset,
                       "test_accuracy": ck.get("test_accuracy"), "epochs": ck.get("epochs")},
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_export(b: Build, chosen: list[ArtefactKind], plan: dict[str, Any], *, t_start: float,
                 before_meta: Callable[[Path, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Write the export directory ``b.dir`` atomically: each chosen artefact kind in order (the registry,
    :mod:`.artefacts`), then meta.json. The one writer for every intake (a lightcl checkpoint, a
    torchvision-keyed file, any module); ``before_meta(tmp, meta)`` may add figures (e.g. accuracy) last."""
    out = b.dir
    with atomic_directory(out, owned=owned_names) as tmp:
        b.dir = tmp
        try:
            build_all(b, chosen, plan)
        finally:
            b.dir = out
        if before_meta is not None:
            before_meta(tmp, b.meta)
        finish(tmp, b.meta, t_start)
    b.say(f"wrote {out} ({', '.join(b.meta['files'])}) in {b.meta['export_seconds']:.1f} s")
    return b.meta


@register_artefact("onnx", order=10, files="frozen.onnx, frozen.safetensors, head.safetensors")
def build_onnx(b: Build, o: OnnxOptions) -> None:
    """frozen.onnx by the profile's exporter, frozen.safetensors (what the torch backend rebuilds), the head;
    then parity on real images (:class:`ParityError`: nothing written)."""
    meta, prof = b.meta, PROFILES[o.profile]
    onnx_path = b.dir / "frozen.onnx"
    b.say(f"exporting frozen part ({meta['split']} and everything before it) with the {prof['exporter']} "
          f"exporter, opset {prof['opset']}")
    info = export_onnx(b.frozen, onnx_path, o.profile, b.input_shape)
    meta.update(exporter=info["exporter"], opset=info["opset"], onnx=info)
    meta["profile_reason"] = info["reason"]
    stored = b.frozen if b.device_frozen is None else b.device_frozen
    save_frozen(b.dir / "frozen.safetensors", stored, list(getattr(stored, "block_names", [])),
                extra={"onnx_sha256": sha256_file(onnx_path), "feature_shape": meta["feature_shape"],
                       "input_shape": list(b.input_shape), **b.frozen_extra})
    b.head.save(b.dir / "head.safetensors")
    im = b.images
    b.say(f"parity: torch vs onnxruntime on {im.parity_desc}")
    par = check_parity(b.frozen, b.head, onnx_path, b.dir / "frozen.safetensors", im.x_par, im.y_par, o.atol,
                       images=im.parity_desc, relative=o.relative_atol)
    meta["parity"] = par
    b.say(f"parity: max abs diff {par['max_abs_diff']:.3g}, mean {par['mean_abs_diff']:.3g} (atol {o.atol:g}); "
          f"top-1 agreement {par['top1_agreement']:.4f}")
    if not par["passed"]:
        tol = ("tolerance %.3g (atol %g x max |feature| %.3g)" % (par["tolerance"], o.atol, par["reference_max_abs"])
               if o.relative_atol else "atol %g" % o.atol)
        raise ParityError(
            f"ONNX export differs from PyTorch: max abs diff {par['max_abs_diff']:.3g} "
            f"(batch 1: {par['batch1_max_abs_diff']:.3g}, torch rebuild: {par['torch_rebuild_max_abs_diff']:.3g}) "
            f"> {tol}; nothing written")


def summary_lines(meta: dict[str, Any], out_dir: str | Path) -> list[str]:
    par = meta["parity"]
    width = "" if meta.get("width") is None else f" width {meta['width']}"
    intake = (meta.get("model") or {}).get("intake", "checkpoint")
    lines = [
        f"exported {meta['arch']}{width} ({intake}) split {meta['split']} at input {'x'.join(map(str, meta['input_shape']))} "
        f"-> {out_dir}",
        f"  frozen.onnx: {meta['exporter']} exporter, opset {meta['opset']}, profile {meta['profile']}, "
        f"features {meta['feature_shape']}, frozen_id {meta['frozen_id'][:16]}",
        f"  parity on {par['batch']} real images: max abs diff {par['max_abs_diff']:.3g}, mean abs diff "
        f"{par['mean_abs_diff']:.3g} (atol {par['atol']:g}), top-1 agreement {par['top1_agreement']:.4f}",
    ]
    if meta.get("accuracy"):
        a = meta["accuracy"]
        lines.append(f"  accuracy on {a['images']}: torch {a['torch']:.4f}, export {a['export']:.4f}"
                     + (f", int8 {a['export_int8']:.4f}" if "export_int8" in a else ""))
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


# real_images (lightcl.data.tasks) and ort_session/run_session (.ort_run) stay importable from here
__all__ = ["export_checkpoint", "export_onnx", "check_parity", "real_images", "ort_session", "run_session", "PROFILES",
           "ParityError", "AgreementError", "summary_lines"]
