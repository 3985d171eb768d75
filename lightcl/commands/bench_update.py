"""``lightcl bench update DIR``: update-step time and peak memory per mode, each in its own process."""
from __future__ import annotations

import argparse

from lightcl.commands import _args

DESCRIPTION = ("Time one update step and meter peak memory for: lightcl (engine + onnxruntime), lightcl-torch, "
               "lightcl-reference (the authors' procedure) and finetune (whole model). Each mode runs in a fresh "
               "subprocess on the same real batch; peak RSS is reported above the idle process after imports. --ledger "
               "breaks each peak down into measured parts.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", metavar="DIR")
    _args.add_batch(p, flag="--batch", default=32, help="samples per update step")
    p.add_argument("--steps", type=int, default=30, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", default=None,
                   help="comma-separated (default lightcl,lightcl-torch,lightcl-reference,finetune, + lightcl-sparse "
                        "with --sparse-export); also lightcl-int8 / lightcl-sparse-int8 (exports made with --int8), "
                        "lightcl-plain (plain torch.optim.SGD step), lightcl-noarena (onnxruntime without its arena), "
                        "lightcl-system / lightcl-sparse-system / lightcl-int8-system (the engine without its lean "
                        "allocator: glibc defaults, onnxruntime arena on)")
    p.add_argument("--sparse-export", default=None, metavar="DIR",
                   help="a pruned export of the same checkpoint (lightcl export --sparsity ...) for lightcl-sparse*")
    p.add_argument("--ledger", action="store_true",
                   help="also print where each mode's peak goes, taken apart at one sampled moment of an extra "
                        "metered step: frozen weights, runtime session, run buffers, trainable weights, gradients and "
                        "saved activations alive then, optimizer state, buffer+masks, inputs, step temporaries and "
                        "freed heap kept by malloc (glibc mallinfo2; n/a elsewhere), library pages, the peak reached "
                        "outside the metered step, unexplained")
    _args.add_threads(p, help="torch/ort threads in every mode")
    p.add_argument("--data-path", default=None)
    _args.add_json(p)


def run(args: argparse.Namespace) -> int:
    from lightcl.bench.update import bench_update, format_ledger, format_table
    from lightcl.commands._safety import check_batch, check_output, check_threads, export_bytes_per_sample
    from lightcl.engine.fileio import write_json_atomic

    check_threads(args.threads)
    check_output(args.json, dirs=[args.export_dir] + ([args.sparse_export] if args.sparse_export else []))
    check_batch(args.batch, "--batch", export_bytes_per_sample(args.export_dir))
    if args.modes is None:
        modes = ["lightcl", "lightcl-torch", "lightcl-reference", "finetune"]
        if args.sparse_export:
            modes.append("lightcl-sparse")
    else:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    res = bench_update(args.export_dir, batch=args.batch, steps=args.steps, warmup=args.warmup, modes=modes,
                       threads=args.threads, data_path=args.data_path, sparse_export=args.sparse_export)
    print(format_table(res))
    if args.ledger:
        print(format_ledger(res))
    if args.json:
        write_json_atomic(args.json, res)
        print(f"wrote {args.json}")
    return 0
