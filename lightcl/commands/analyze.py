"""``lightcl analyze CKPT --dataset NAME``: learning plasticity and memory stability per block."""
from __future__ import annotations

import argparse

from lightcl.commands import _args

DESCRIPTION = ("The paper's layer analysis, with our documented definitions: LP loss of a block = new-task accuracy "
               "lost when it is frozen instead of trained; MS = linear CKA of its old-task features before vs after "
               "full fine-tuning on a new task. Prints a table, writes analysis.json/.md/.png with --out, and "
               "recommends the deepest split whose frozen blocks stay within the thresholds.")


def _classes(s: str | None):
    if s is None:
        return None
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        from lightcl.engine.errors import InputError

        raise InputError(f"classes must be a comma list of integers, got {s!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightcl.bench.analysis import LP_THRESHOLD, MS_THRESHOLD

    p.add_argument("ckpt", metavar="CKPT", help="backbone checkpoint (PATH, PATH.safetensors or PATH.json)")
    p.add_argument("--dataset", required=True, help="dataset whose classes make the old and new task")
    _args.output(p.add_argument("--out", default=None, help="directory for analysis.json, analysis.md, analysis.png"),
                 "dir")
    p.add_argument("--old-classes", default=None, help="comma list (default: first half of the classes)")
    p.add_argument("--new-classes", default=None, help="comma list (default: the other classes)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per fine-tuning (default 3)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..N-1 and average (default 1)")
    p.add_argument("--level", choices=("stage", "block"), default="stage", help="stage (default) or residual block")
    p.add_argument("--lp-threshold", type=float, default=LP_THRESHOLD,
                   help=f"max prefix LP loss in accuracy points (default {LP_THRESHOLD})")
    p.add_argument("--ms-threshold", type=float, default=MS_THRESHOLD,
                   help=f"min linear CKA of every frozen unit (default {MS_THRESHOLD})")
    p.add_argument("--max-train", type=int, default=None, help="cap training samples per task (time budget)")
    p.add_argument("--max-eval", type=int, default=500, help="old-task test samples for CKA (default 500)")
    _args.add_batch(p, default=32, help="fine-tuning batch size")
    _args.add_threads(p, help="torch intra-op threads")
    p.add_argument("--data-path", default=None)
    p.add_argument("--quiet", action="store_true")


def _ckpt_bytes_per_sample(ckpt) -> int | None:
    from lightcl.commands._safety import backbone_bytes_per_sample
    from lightcl.engine.errors import LightCLError
    from lightcl.engine.fileio import read_json
    from lightcl.export.checkpoint import checkpoint_paths

    try:
        meta = read_json(checkpoint_paths(ckpt)[1], "checkpoint metadata")
        return backbone_bytes_per_sample(meta["arch"], meta["width"], tuple(meta["input_size"]))
    except (LightCLError, KeyError, TypeError, ValueError):
        return None  # analyze's own load says what is wrong


def _check(args: argparse.Namespace) -> None:
    import math

    from lightcl.engine.errors import InputError

    from lightcl.commands._safety import check_batch, check_threads

    check_threads(args.threads)
    for name in ("max_train",):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    check_batch(args.batch_size, "--batch-size", _ckpt_bytes_per_sample(args.ckpt))
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise InputError(f"--lr must be a positive number, got {args.lr}")
    for name in ("momentum", "lp_threshold", "ms_threshold"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v >= 0):
            raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")


def run(args: argparse.Namespace) -> int:
    from lightcl.bench.analysis import analyze, format_table, write_outputs

    _check(args)
    from lightcl.commands._safety import check_output_dir
    from lightcl.engine.outpath import check_output_file

    check_output_dir(args.out)
    for name in ("analysis.json", "analysis.md", "analysis.png") if args.out else ():
        check_output_file(f"{args.out}/{name}", "--out", root=args.out)  # before the analysis, not after it

    res = analyze(args.ckpt, args.dataset, old_classes=_classes(args.old_classes), new_classes=_classes(args.new_classes),
                  epochs=args.epochs, lr=args.lr, momentum=args.momentum, batch_size=args.batch_size, seeds=args.seeds,
                  level=args.level, lp_threshold=args.lp_threshold, ms_threshold=args.ms_threshold,
                  max_train=args.max_train, max_eval=args.max_eval, data_path=args.data_path, threads=args.threads,
                  progress=not args.quiet)
    print(format_table(res))
    if args.out:
        paths = write_outputs(res, args.out)
        print(f"wrote {paths['json']}, {paths['md']}, {paths['png']}")
    return 0
