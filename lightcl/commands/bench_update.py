"""``lightcl bench update DIR``: update-step time and peak memory per mode, each in its own process."""
from __future__ import annotations

import argparse

DESCRIPTION = ("Time one update step and meter peak memory for: lightcl (engine + onnxruntime), lightcl-torch, "
               "lightcl-reference (the authors' procedure) and finetune (whole model). Each mode runs in a fresh "
               "subprocess on the same real batch; peak RSS is reported above the idle process after imports.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", metavar="DIR")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", default="lightcl,lightcl-torch,lightcl-reference,finetune",
                   help="comma-separated; also lightcl-int8 (needs an export made with --int8)")
    p.add_argument("--threads", type=int, default=None, help="torch/ort threads in every mode (default: all cores)")
    p.add_argument("--data-path", default=None)
    p.add_argument("--json", default=None)


def run(args: argparse.Namespace) -> int:
    from lightcl.bench.update import bench_update, format_table
    from lightcl.engine.fileio import write_json_atomic

    from lightcl.commands._safety import check_batch, check_output, check_threads, export_bytes_per_sample

    check_threads(args.threads)
    check_output(args.json, dirs=[args.export_dir])
    check_batch(args.batch, "--batch", export_bytes_per_sample(args.export_dir))
    res = bench_update(args.export_dir, batch=args.batch, steps=args.steps, warmup=args.warmup,
                       modes=[m.strip() for m in args.modes.split(",") if m.strip()], threads=args.threads,
                       data_path=args.data_path)
    print(format_table(res))
    if args.json:
        write_json_atomic(args.json, res)
        print(f"wrote {args.json}")
    return 0
