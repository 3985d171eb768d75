"""``lightcl bench``: ``latency DIR``, ``update DIR``, or ``--suite NAME`` (methods x seeds)."""
from __future__ import annotations

import argparse
import importlib
import sys

DESCRIPTION = ("Benchmarks. `lightcl bench latency DIR` times extractor backends; `lightcl bench update DIR` "
               "times and meters one update step per mode; `lightcl bench --suite NAME --out DIR` runs the "
               "continual-learning methods of a scenario and writes results.json/csv, report.md and plots.")

# sub-verb -> module with add_arguments(p) and run(args)
SUBVERBS = {
    "latency": ("lightcl.commands.bench_latency", "extractor latency per backend and batch (p50/p90/p99, RSS)"),
    "update": ("lightcl.commands.bench_update", "update-step time and peak memory: engine vs reference vs finetune"),
    "suite": ("lightcl.commands.bench_suite", "run a scenario's methods x seeds; report, CSV, plots"),
}


def _mod(name: str):
    path = SUBVERBS[name][0]
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as e:
        if e.name == path:
            return None
        raise


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_verb", metavar="SUBVERB")
    for name, (_, help_) in SUBVERBS.items():
        mod = _mod(name)
        sp = sub.add_parser(name, help=help_ + ("" if mod else " [not built yet]"),
                            description=getattr(mod, "DESCRIPTION", help_))
        if mod is not None:
            mod.add_arguments(sp)


def rewrite_argv(argv: list[str]) -> list[str]:
    """``bench --suite X ...`` is shorthand for ``bench suite --suite X ...``."""
    if argv and argv[0].startswith("--suite"):
        return ["suite", *argv]
    return argv


def run(args: argparse.Namespace) -> int:
    verb = args.bench_verb
    if verb is None:
        print("lightcl bench: choose a sub-verb: latency, update, suite (or --suite NAME); see --help", file=sys.stderr)
        return 2
    mod = _mod(verb)
    if mod is None:
        print(f"lightcl bench {verb}: not built yet", file=sys.stderr)
        return 2
    return int(mod.run(args) or 0)
