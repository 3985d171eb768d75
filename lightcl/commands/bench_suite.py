"""``lightcl bench --suite NAME --out DIR`` (= ``lightcl bench suite --suite NAME ...``)."""
from __future__ import annotations

import argparse

from lightcl.commands import _args
import shlex
import sys

DESCRIPTION = ("Run a scenario's continual-learning methods x seeds, each method-seed in its own process, from the "
               "same pretrained start and the same data order; write DIR/results.json, results.csv, report.md "
               "(Table-1-shaped, mean ± std over seeds) and PNG plots. Suites: smoke (CI, 1 epoch/task), offline, "
               "offline-hard, paper-cifar10, paper-tinyimg.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightcl.bench.methods import METHODS
    from lightcl.bench.scenarios import SCENARIOS

    p.add_argument("--suite", required=True, choices=list(SCENARIOS), help="scenario to run")
    _args.output(p.add_argument("--out", required=True, help="output directory"), "dir")
    p.add_argument("--methods", default="all", help=f"comma list or 'all' (default): {', '.join(METHODS)}")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default: 1 for smoke, 3 otherwise)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per task (default: the scenario's; smoke: 1)")
    p.add_argument("--buffer", type=int, default=None, help="buffer size for every replay method (default: 15)")
    _args.add_threads(p, default=1, help="torch/onnxruntime threads per run (0 = the libraries' default)")
    _args.add_backend(p, default="ort", help="extractor backend for lightcl / latent-replay")
    _args.add_device(p)
    p.add_argument("--data-path", default=None, help="explicit path of the continual-learning dataset")
    p.add_argument("--method-config", default=None, metavar="PATH",
                   help="METHOD.json (or a directory of them) in bench/configs' format, used instead of the cited "
                        "config for the methods it covers; unknown keys are refused")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local (default): runs one after another here; ray: each method-seed a Ray task "
                        "(needs lightcl[ray]) declaring --threads CPUs (+1 GPU for cuda)")
    p.add_argument("--address", default=None,
                   help="with --executor ray: an existing Ray cluster (auto, HOST:6379, ray://HOST:10001); "
                        "default: start a local Ray instance")
    p.add_argument("--no-resume", action="store_true",
                   help="re-run every method-seed even if OUT/records holds its finished record (default: a "
                        "restarted suite skips the runs that finished)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from lightcl.bench.suite import run_suite

    from lightcl.commands._safety import check_output_dir, check_threads

    check_output_dir(args.out)
    check_threads(args.threads or None)  # 0 = the libraries' default
    command = f"lightcl bench --suite {args.suite}"
    for flag, val in (("--methods", None if args.methods == "all" else args.methods), ("--seeds", args.seeds),
                      ("--epochs", args.epochs), ("--buffer", args.buffer),
                      ("--threads", None if args.threads == 1 else args.threads),
                      ("--backend", None if args.backend == "ort" else args.backend),
                      ("--device", None if args.device == "cpu" else args.device),
                      ("--executor", None if args.executor == "local" else args.executor),
                      ("--address", args.address), ("--method-config", args.method_config)):
        if val is not None:
            command += f" {flag} {shlex.quote(str(val))}"
    command += f" --out {shlex.quote(args.out)}"
    res = run_suite(args.suite, args.out, methods=args.methods, seeds=args.seeds, epochs=args.epochs,
                    buffer=args.buffer, threads=args.threads or None, backend=args.backend, device=args.device,
                    data_path=args.data_path, progress=not args.quiet, plots=not args.no_plots, command=command,
                    executor=args.executor, address=args.address, resume=not args.no_resume,
                    method_config=args.method_config)
    from lightcl.bench.report import main_table

    print()
    print(main_table(res))
    failed = [r for r in res["records"] if r.get("status") != "ok"]
    print(f"\nwrote {args.out}/results.json, results.csv, report.md" + ("" if args.no_plots else " and plots")
          + f" ({res['wall_s'] / 60:.1f} min)")
    if failed:
        print(f"{len(failed)} run(s) failed: see {args.out}/logs/", file=sys.stderr)
        return 1
    return 0
