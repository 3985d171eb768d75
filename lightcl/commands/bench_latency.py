"""``lightcl bench latency DIR --backend torch,ort,ort-int8 --batch 1,32 --json OUT``."""
from __future__ import annotations

import argparse

from lightcl.commands import _args

DESCRIPTION = (
    "Time the frozen-part extractor of an export directory per backend and batch size. Each (backend, batch) "
    "runs in its own fresh process: load (sha256 check + session creation), first run, warm-up, then timed "
    "iterations under torch.inference_mode with the same thread count for every runtime. Prints a table "
    "(p50/p90/p99/mean ms, images/s, session creation and first-run ms, peak RSS, ratio to torch) and writes "
    "the figures as JSON {\"results\": [...], \"env\": {...}}.")


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", metavar="DIR", nargs="+",
                   help="export directory (lightcl export ... --out DIR); several: timed in one run, interleaved "
                        "per (backend, batch), each with its p50 over the first DIR's")
    _args.add_backend(p, default="torch,ort", multiple=True, help="extractor backends to time")
    _args.add_batch(p, flag="--batch", default="1,32", type=str, metavar="B1,B2", help="comma list of batch sizes")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--iters", type=int, default=None, help="timed iterations per configuration")
    g.add_argument("--seconds", type=float, default=None, help="timed seconds per configuration (default 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default: iters/10, 3..20; 10 with --seconds)")
    _args.add_threads(p, help="intra-op threads for every runtime")
    _args.add_device(p)
    p.add_argument("--spin", action="store_true", help="let onnxruntime threads spin between runs (default off, as "
                                                       "when the head trains in the same process)")
    p.add_argument("--graph-optimization", default=None, choices=["all", "extended", "basic", "disable"],
                   help="onnxruntime graph optimisation level (default all)")
    _args.add_json(p, help="write the figures to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    from lightcl.bench.latency import format_table, run_latency
    from lightcl.engine.errors import InputError

    try:
        batches = [int(b) for b in _csv(args.batch)]
    except ValueError:
        raise InputError(f"--batch must be a comma list of integers, got {args.batch!r}") from None
    backends = _csv(args.backend)
    if not backends or not batches:
        raise InputError("need at least one --backend and one --batch")
    from lightcl.commands._safety import check_batch, check_output, check_threads, export_bytes_per_sample

    check_threads(args.threads)
    check_output(args.json, dirs=list(args.export_dir))
    for d in args.export_dir:
        per = export_bytes_per_sample(d, train=False)
        for b in batches:
            check_batch(b, "--batch", per)
    report = run_latency(args.export_dir[0], backends, batches, compare=args.export_dir[1:], iters=args.iters, seconds=args.seconds,
                         warmup=args.warmup, threads=args.threads, device=args.device, spin=args.spin,
                         graph_optimization=args.graph_optimization, progress=not args.quiet)
    print(format_table(report))
    if args.json:
        from lightcl.engine.fileio import write_json_atomic

        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    failed = [r for r in report["results"] if "error" in r]
    return 1 if failed else 0
