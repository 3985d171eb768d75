"""``lightcl export CKPT --split layer3 --out DIR``: frozen part to ONNX (+ int8, + TensorRT), head to safetensors."""
from __future__ import annotations

import argparse

from lightcl.commands import _args

DESCRIPTION = (
    "Split a pretrained checkpoint at a named block: the frozen lower/middle layers go to DIR/frozen.onnx "
    "(eval-mode BN folded, dynamic batch) and DIR/frozen.safetensors, the trainable deep part + classifier to "
    "DIR/head.safetensors, and DIR/meta.json records shapes, normalisation, versions, parity figures and the "
    "sha256 of every file. Parity is checked on real images of the checkpoint's dataset; the export fails "
    "(exit 1, nothing written) when ONNX and PyTorch differ by more than --atol. --int8 adds a static QDQ int8 "
    "model and refuses it below --min-agreement unless --force. --tensorrt builds a TensorRT plan for this GPU "
    "(exit 3 where TensorRT or CUDA is missing). --sparsity removes output channels physically (structured "
    "pruning, residual groups kept consistent) so every exported tensor is smaller.")


def _calib_size(value: str) -> int | str:
    """argparse type of --calib-size: 'auto' or an integer (one-line error otherwise)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an integer, got {value!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint path prefix (CKPT.safetensors + CKPT.json)")
    _args.output(p.add_argument("--out", required=True, help="export directory to write (replaced atomically)"), "dir")
    p.add_argument("--split", default=None, help="last frozen block or stage, e.g. resnet18: stem, layer1..layer4, "
                                                  "layer4.0; mobilenetv2: stage1..stage7, stage6.1 (default: the "
                                                  "backbone's, layer3 / stage5)")
    p.add_argument("--profile", default="default", choices=["default", "jetson-nano"],
                   help="default: dynamo exporter, opset 18; jetson-nano: legacy exporter, opset 13 (TensorRT 8.2)")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs diff allowed between ONNX and PyTorch (1e-4)")
    p.add_argument("--int8", action="store_true",
                   help="also write frozen.int8.onnx (static QDQ); with --tensorrt, build an int8 plan")
    p.add_argument("--calib-size", type=_calib_size, default="auto", metavar="auto|N",
                   help="real images used for int8 calibration (auto: 1024 for a pruned export, --sparsity; "
                        "256 otherwise)")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"],
                   help="int8 calibration method (minmax)")
    p.add_argument("--min-agreement", type=float, default=0.98,
                   help="minimum top-1 agreement of int8 vs fp32 on held-out images (0.98)")
    p.add_argument("--force", action="store_true", help="keep the int8 model even below --min-agreement")
    p.add_argument("--tensorrt", action="store_true", help="build a TensorRT plan (needs tensorrt + a CUDA GPU)")
    p.add_argument("--fp16", action="store_true", help="with --tensorrt: fp16 plan")
    p.add_argument("--max-batch", type=int, default=32, help="with --tensorrt: optimisation profile 1..N (32)")
    p.add_argument("--workspace-mib", type=int, default=1024, help="with --tensorrt: builder workspace limit (1024)")
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


def run(args: argparse.Namespace) -> int:
    from lightcl.engine.errors import InputError
    from lightcl.export.onnx_export import export_checkpoint, summary_lines

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
