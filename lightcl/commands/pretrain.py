"""``lightcl pretrain``: train a whole backbone, write PATH.safetensors + PATH.json."""
from __future__ import annotations

import argparse

from lightcl.commands import _args

DESCRIPTION = ("Train a backbone from scratch on a dataset (seeded, progress bar). Writes PATH.safetensors "
               "(weights) and PATH.json (arch, width, classes, normalisation, test_accuracy, sha256).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="digits, mnist-5k, fashion-mnist, cifar10, cifar100, tinyimagenet, imagenet32, folder")
    p.add_argument("--data-path", default=None, help="explicit dataset location (first in the resolution order)")
    p.add_argument("--arch", default="resnet18", help="backbone name in the zoo: resnet18 (default), mobilenetv2")
    p.add_argument("--width", type=int, default=64, help="base width: 64 = paper, 32 demo, 16 tests")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=int, default=None, help="train on a seeded class-balanced subset of N images")
    _args.output(p.add_argument("--out", required=True, help="output path prefix: writes OUT.safetensors and OUT.json"),
                 "prefix")
    _args.add_batch(p, default=64, help="training batch size")
    _args.add_threads(p, help="torch intra-op threads")
    _args.add_json(p, help="also write the summary to this JSON file")


def _check(args: argparse.Namespace) -> None:
    import math

    from lightcl.engine.errors import InputError
    from lightcl.export.zoo import list_backbones

    if args.arch not in list_backbones():
        raise InputError(f"unknown arch {args.arch!r}; known: {', '.join(list_backbones())}")
    for name in ("width", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from lightcl.commands._safety import backbone_bytes_per_sample, check_batch, check_output, check_threads

    check_threads(args.threads)
    if args.width > 1024:
        raise InputError(f"--width must be <= 1024, got {args.width}")
    check_batch(args.batch_size, "--batch-size", backbone_bytes_per_sample(args.arch, args.width))
    for name in ("subset",):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise InputError(f"--{name} must be >= 1, got {v}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise InputError(f"--lr must be a positive number, got {args.lr}")

    from lightcl.export.checkpoint import checkpoint_paths

    check_output(args.json, files=checkpoint_paths(args.out))
    from lightcl.engine.outpath import check_output_file

    for f in checkpoint_paths(args.out):  # fail now, not after the training
        check_output_file(f, "--out")  # the one output rule: no link, FIFO, device there
        if f.is_dir():
            raise InputError(f"--out: {f} is a directory")
        d = f.parent
        while not d.exists() and d != d.parent:
            d = d.parent
        if not d.is_dir():
            raise InputError(f"--out: {d} is not a directory")


def run(args: argparse.Namespace) -> int:
    from lightcl.export.pretrain import pretrain

    _check(args)
    meta = pretrain(args.dataset, args.out, arch=args.arch, width=args.width, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, seed=args.seed, data_path=args.data_path,
                    threads=args.threads, subset=args.subset)
    per_epoch = sum(meta["epoch_seconds"]) / max(1, len(meta["epoch_seconds"]))
    print(f"pretrained {args.arch} width {args.width} on {args.dataset}: test accuracy {meta['test_accuracy']:.4f} "
          f"({per_epoch:.1f} s/epoch)")
    print(f"wrote {meta['weights']} and {meta['meta_path']}")
    if args.json:
        from lightcl.engine.fileio import write_json_atomic

        write_json_atomic(args.json, meta)
    return 0
