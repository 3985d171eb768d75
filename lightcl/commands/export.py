"""``lightcl export``: frozen part to ONNX (+ int8, + TensorRT), head to safetensors, from three intakes.

* ``lightcl export CKPT --out DIR``: a ``lightcl pretrain`` checkpoint (docs/export.md, "Checkpoint format");
* ``lightcl export W.pth --arch tv_resnet18 --images IMGS --out DIR``: a torchvision-keyed weights file;
* ``lightcl export --model pkg.mod:factory [--weights W] --split S --classifier C --input-size C,H,W --mean ..
  --std .. --images IMGS --out DIR``: any ``nn.Module`` by import path (docs/export.md, "Your own model");
* ``lightcl export --add-plan DIR [--fp16|--int8] [--max-batch N]``: a TensorRT plan, built on this machine, added
  to a finished export (docs/export.md, "--tensorrt").
"""
from __future__ import annotations

import argparse

from lightcl.commands import _args
from lightcl.engine.errors import InputError


class UsageError(InputError):
    """Options that do not go together (exit 2, like argparse's own usage errors)."""

    exit_code = 2

DESCRIPTION = (
    "Split a pretrained checkpoint at a named block: the frozen lower/middle layers go to DIR/frozen.onnx "
    "(eval-mode BN folded, dynamic batch) and DIR/frozen.safetensors, the trainable deep part + classifier to "
    "DIR/head.safetensors, and DIR/meta.json records shapes, normalisation, versions, parity figures and the "
    "sha256 of every file. Parity is checked on real images of the checkpoint's dataset; the export fails "
    "(exit 1, nothing written) when ONNX and PyTorch differ by more than --atol. --int8 adds a static QDQ int8 "
    "model and refuses it below --min-agreement unless --force. --tensorrt builds a TensorRT plan for this GPU "
    "(exit 3 where TensorRT or CUDA is missing). --sparsity removes output channels physically (structured "
    "pruning, residual groups kept consistent) so every exported tensor is smaller. Besides a lightcl checkpoint, "
    "the source may be a torchvision-keyed weights file (--arch tv_resnet18 ...) or any nn.Module by import path "
    "(--model pkg.module:factory); both need --images DIR (a class-per-subfolder folder) for parity and "
    "calibration at the model's own input size. --add-plan DIR adds a TensorRT plan built on this machine to a "
    "finished export instead (exit 3 where TensorRT or CUDA is missing). docs/export.md")


def _calib_size(value: str) -> int | str:
    """argparse type of --calib-size: 'auto' or an integer (one-line error otherwise)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer, got {value!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="SOURCE", nargs="?", default=None,
                   help="a lightcl checkpoint path prefix (CKPT.safetensors + CKPT.json); with --arch, the "
                        "torchvision-keyed weights file (.pth or .safetensors)")
    g = p.add_argument_group("your own model (docs/export.md)")
    g.add_argument("--arch", default=None, metavar="NAME",
                   help="SOURCE is a torchvision-keyed weights file of this family: tv_resnet18, tv_resnet50, "
                        "tv_mobilenet_v2, tv_mobilenet_v3_small, tv_mobilenet_v3_large (num_classes from its classifier)")
    g.add_argument("--model", default=None, metavar="PKG.MODULE:FACTORY",
                   help="any nn.Module: import PKG.MODULE (from PYTHONPATH / the current directory) and call FACTORY()")
    g.add_argument("--weights", default=None, metavar="W",
                   help="with --model: weights to load (.safetensors, or .pth read with torch.load(weights_only=True); "
                        "a bare state dict or one under 'state_dict'/'model'; a 'module.' prefix is stripped)")
    g.add_argument("--classifier", default=None, metavar="NAME",
                   help="with --model: the nn.Linear whose output is the logits (e.g. fc, classifier.3); --arch knows its own")
    g.add_argument("--input-size", default=None, metavar="C,H,W",
                   help="the model's input: S, H,W or C,H,W (--arch default 3,224,224; needed with --model)")
    g.add_argument("--mean", default=None, metavar="M1,M2,M3",
                   help="per-channel normalisation mean in [0, 1] units (--arch default ImageNet's; needed with --model)")
    g.add_argument("--std", default=None, metavar="S1,S2,S3", help="per-channel std, as --mean")
    g.add_argument("--resize", default=None, metavar="crop|crop:S|stretch|pad",
                   help="how a camera image of any size becomes the input: crop = torchvision's resize of the shorter "
                        "side to round(min(H, W) / 0.875) then centre crop (default), crop:S with shorter side S, "
                        "stretch, or pad (letterbox)")
    g.add_argument("--images", default=None, metavar="DIR",
                   help="with --arch/--model: a class-per-subfolder image folder (train/ and test/, or split 80/20) for "
                        "parity, accuracy and int8 calibration at the model's input size")
    g.add_argument("--class-names", default=None, metavar="A,B,...",
                   help="names of the model's own classes, one per classifier output (default: the --images folder's "
                        "class folders when there are as many)")
    _args.output(p.add_argument("--out", default=None, help="export directory to write (replaced atomically; "
                                                             "needed unless --add-plan)"), "dir")
    _args.output(p.add_argument("--add-plan", default=None, metavar="EXPORT_DIR",
                                help="add a TensorRT plan built on this machine to this finished export (with --fp16 "
                                     "or --int8, --max-batch, --workspace-mib, --calib-size, --data-path); the "
                                     "directory is swapped atomically with meta.json updated, other files are kept. "
                                     "Needs tensorrt + a CUDA GPU (exit 3 otherwise)"), "dir")
    p.add_argument("--split", default=None, help="last frozen block or stage, e.g. resnet18: stem, layer1..layer4, "
                                                  "layer4.0; mobilenetv2: stage1..stage7, stage6.1 (default: the "
                                                  "backbone's, layer3 / stage5); with --arch/--model any module name "
                                                  "(needed with --model)")
    p.add_argument("--profile", default="default", choices=["default", "jetson-nano"],
                   help="default: dynamo exporter, opset 18; jetson-nano: legacy exporter, opset 13 (TensorRT 8.2)")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs diff allowed between ONNX and PyTorch (1e-4)")
    p.add_argument("--int8", action="store_true",
                   help="also write frozen.int8.onnx (static QDQ); with --tensorrt or --add-plan, build an int8 plan")
    p.add_argument("--calib-size", type=_calib_size, default="auto", metavar="auto|N",
                   help="real images used for int8 calibration (auto: 1024 for a pruned export, --sparsity; "
                        "256 otherwise, and for --add-plan --int8)")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"],
                   help="int8 calibration method (minmax)")
    p.add_argument("--min-agreement", type=float, default=0.98,
                   help="minimum top-1 agreement of int8 vs fp32 on held-out images (0.98)")
    p.add_argument("--force", action="store_true", help="keep the int8 model even below --min-agreement")
    p.add_argument("--tensorrt", action="store_true", help="build a TensorRT plan (needs tensorrt + a CUDA GPU)")
    p.add_argument("--fp16", action="store_true", help="with --tensorrt or --add-plan: fp16 plan")
    p.add_argument("--max-batch", type=int, default=32,
                   help="with --tensorrt or --add-plan: optimisation profile 1..N (32)")
    p.add_argument("--workspace-mib", type=int, default=1024,
                   help="with --tensorrt or --add-plan: builder workspace limit (1024)")
    p.add_argument("--sparsity", default=None, metavar="authors|S",
                   help="prune output channels physically before the split: 'authors' (the paper's per-stage "
                        "ratios 0.2/0.2/0.2/0.7/0.8, signed-mean importance, ~0.90 weight sparsity) or a global "
                        "target weight sparsity S in (0, 1) (L1 filter importance); see docs/sparse.md")
    p.add_argument("--round-channels", type=int, default=None, metavar="N",
                   help="with --sparsity: round every kept channel count to a multiple of N (nearest, at least N, "
                        "never more than the layer has; same importance ranking). Off by default ('authors' keeps "
                        "the authors' counts); 16 (8 on AVX2-only CPUs) puts every pruned conv on onnxruntime's "
                        "fast NCHWc path on x86 with no channel padding; see docs/sparse.md")
    p.add_argument("--recover-epochs", type=int, default=None,
                   help="with --sparsity: recovery fine-tune epochs on the pretraining data (default 2, lr 0.05; 0 = none)")
    p.add_argument("--data-path", default=None, help="where the checkpoint's dataset is (for parity/calibration)")
    _args.add_json(p, help="also write meta.json's content to this file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{flag} must be comma-separated numbers, got {text!r}") from None


def _input_size(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        v = [int(t) for t in text.replace("x", ",").split(",")]
    except ValueError:
        v = []
    if len(v) not in (1, 2, 3) or any(not 0 < t <= 16384 for t in v):
        raise InputError(f"--input-size must be S, H,W or C,H,W of positive integers, got {text!r}")
    if len(v) == 1:
        v = [v[0], v[0]]
    return (3, v[0], v[1]) if len(v) == 2 else (v[0], v[1], v[2])


def run_own_model(args: argparse.Namespace) -> dict:
    """--arch / --model: the graph intakes (lightcl.export.intake)."""
    from lightcl.export import intake

    if args.arch and args.model:
        raise InputError("--arch and --model are two intakes: give one")
    zoo_only = [f for f, v in (("--sparsity", args.sparsity), ("--round-channels", args.round_channels),
                                ("--recover-epochs", args.recover_epochs), ("--data-path", args.data_path),
                                ("--tensorrt", args.tensorrt or None)) if v is not None]
    if zoo_only:
        raise InputError(f"{', '.join(zoo_only)} apply to lightcl checkpoints only, not to --arch/--model exports")
    if args.images is None:
        raise InputError("--images DIR is needed with --arch/--model: parity and calibration run on your own images")
    shape = _input_size(args.input_size)
    mean, std = _floats(args.mean, "--mean"), _floats(args.std, "--std")
    resize = intake.parse_resize(args.resize, shape or (3, 224, 224)) if args.resize else None
    if resize is not None and args.resize.strip().lower() == "crop" and shape is None and args.arch:
        resize = None  # the family's own default, computed from its input size
    names = [c.strip() for c in args.class_names.split(",")] if args.class_names else None
    common = dict(images=args.images, class_names=names, int8=args.int8, profile=args.profile, atol=args.atol,
                  calib_size=256 if args.calib_size == "auto" else int(args.calib_size),
                  min_agreement=args.min_agreement, force=args.force, int8_options={"method": args.calib_method},
                  progress=not args.quiet, resize=resize)
    if args.arch:
        if args.checkpoint is None:
            raise InputError("--arch needs the weights file as SOURCE: lightcl export W.pth --arch NAME ...")
        if args.weights or args.classifier:
            raise InputError("--weights/--classifier go with --model; with --arch the weights file is SOURCE")
        return intake.export_torchvision(args.checkpoint, args.out, arch=args.arch, input_shape=shape,
                                         split=args.split, mean=mean, std=std, **common)
    if args.checkpoint is not None:
        raise InputError("with --model the weights go in --weights, not SOURCE")
    import os
    import sys

    if os.getcwd() not in sys.path:  # `pkg.module` from the current directory, as `python -m` would find it
        sys.path.insert(0, os.getcwd())
    missing = [f for f, v in (("--split", args.split), ("--classifier", args.classifier),
                              ("--input-size", shape), ("--mean", mean), ("--std", std)) if v is None]
    if missing:
        raise InputError(f"--model needs {', '.join(missing)} (its split point, classifier, input and normalisation)")
    return intake.export_factory(args.model, args.out, weights=args.weights, split=args.split,
                                 classifier=args.classifier, input_shape=shape, mean=mean, std=std, **common)


def run_add_plan(args: argparse.Namespace) -> int:
    """--add-plan DIR: the directory is checked first (a link, FIFO, file or non-export is refused in one line,
    exit 1), then the options, then TensorRT (exit 3 where it or CUDA is missing), then the plan is built."""
    from lightcl.commands._safety import check_output
    from lightcl.export.artefacts import PlanOptions, existing_export
    from lightcl.export.tensorrt_build import add_plan_to_export

    existing_export(args.add_plan)
    stray = [f for f, v in (("SOURCE", args.checkpoint), ("--out", args.out), ("--arch", args.arch),
                            ("--model", args.model), ("--weights", args.weights), ("--classifier", args.classifier),
                            ("--input-size", args.input_size), ("--mean", args.mean), ("--std", args.std),
                            ("--resize", args.resize), ("--images", args.images), ("--class-names", args.class_names),
                            ("--split", args.split), ("--sparsity", args.sparsity),
                            ("--round-channels", args.round_channels), ("--recover-epochs", args.recover_epochs),
                            ("--force", args.force or None), ("--profile", None if args.profile == "default" else 1),
                            ("--atol", None if args.atol == 1e-4 else 1),
                            ("--min-agreement", None if args.min_agreement == 0.98 else 1),
                            ("--calib-method", None if args.calib_method == "minmax" else 1)) if v is not None]
    if stray:
        raise UsageError(f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not go with --add-plan, which adds "
                         "a TensorRT plan to a finished export")
    if args.fp16 and args.int8:
        raise UsageError("--fp16 and --int8 are two plan precisions: give one")
    check_output(args.json, dirs=[args.add_plan])
    opts = PlanOptions("int8" if args.int8 else "fp16" if args.fp16 else "fp32", args.max_batch, args.workspace_mib,
                       None, args.calib_size)
    e = add_plan_to_export(args.add_plan, opts, data_path=args.data_path, progress=not args.quiet)
    print(f"added {e['file']} to {args.add_plan}: TensorRT {e['trt_version']}, sm_{e['compute_capability']}, "
          f"{e['precision']}, batch 1..{e['max_batch']} ({e['build_s']:.1f} s)")
    if args.json:
        from lightcl.engine.export_dir import load_export_meta
        from lightcl.engine.fileio import write_json_atomic

        write_json_atomic(args.json, load_export_meta(args.add_plan, verify=False))
    return 0


def run(args: argparse.Namespace) -> int:
    from lightcl.export.onnx_export import export_checkpoint, summary_lines

    if args.add_plan is not None:
        return run_add_plan(args)
    if args.out is None:
        raise UsageError("--out DIR is needed (or --add-plan EXPORT_DIR to add a TensorRT plan to a finished export)")
    if args.arch or args.model:
        from lightcl.commands._safety import check_output, check_output_dir

        check_output_dir(args.out)
        check_output(args.json, dirs=[args.out], files=[args.checkpoint, args.weights])
        meta = run_own_model(args)
        for line in summary_lines(meta, args.out):
            print(line)
        if args.json:
            from lightcl.engine.fileio import write_json_atomic

            write_json_atomic(args.json, meta)
        return 0
    if args.checkpoint is None:
        raise InputError("give a SOURCE checkpoint, or --arch NAME with a weights file, or --model pkg.module:factory")
    own = [f for f, v in (("--weights", args.weights), ("--classifier", args.classifier), ("--input-size", args.input_size),
                          ("--mean", args.mean), ("--std", args.std), ("--resize", args.resize),
                          ("--images", args.images), ("--class-names", args.class_names)) if v is not None]
    if own:
        raise InputError(f"{', '.join(own)} go with --arch or --model; a lightcl checkpoint records its own")

    if (args.fp16 and not args.tensorrt):
        raise InputError("--fp16 is a TensorRT precision: use it with --tensorrt")
    from lightcl.commands._safety import check_output, check_output_dir
    from lightcl.export.checkpoint import checkpoint_paths

    check_output_dir(args.out)
    check_output(args.json, dirs=[args.out], files=checkpoint_paths(args.checkpoint))
    precision = None
    if args.tensorrt:
        precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    meta = export_checkpoint(
        args.checkpoint, args.out, split=args.split, profile=args.profile, atol=args.atol, int8=args.int8,
        calib_size=args.calib_size, min_agreement=args.min_agreement, force=args.force, data_path=args.data_path,
        progress=not args.quiet, tensorrt=args.tensorrt, trt_precision=precision, max_batch=args.max_batch,
        workspace_mib=args.workspace_mib, int8_options={"method": args.calib_method},
        sparsity=args.sparsity, recover_epochs=args.recover_epochs, round_channels=args.round_channels)
    for line in summary_lines(meta, args.out):
        print(line)
    if args.json:
        from lightcl.engine.fileio import write_json_atomic

        write_json_atomic(args.json, meta)
    return 0
