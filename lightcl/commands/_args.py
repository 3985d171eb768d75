"""Argument groups the verbs share: one definition each of ``--backend``, ``--device``, ``--threads``,
``--json`` and the batch-size flag, so the same flag means the same thing (and says so in ``--help``) in
every verb. Backend choices come from the extractor registry (``lightcl.engine.extractors.registry``,
imported without torch or any runtime).

Values that depend on this machine (thread counts, batch sizes against memory, output paths) are still
checked when the verb runs (``lightcl.commands._safety``): those refusals are one line with exit 1, and
argparse's usage errors stay exit 2.
"""
from __future__ import annotations

import argparse
from typing import Optional

from lightcl.engine.extractors.registry import backend_names, choices

# group titles, in the order they appear in --help after the verb's own options
EXTRACTOR = "extractor"
RUNTIME = "runtime"
OUTPUT = "output"


def _group(p: argparse.ArgumentParser, title: str):
    groups = p.__dict__.setdefault("_lightcl_groups", {})
    if title not in groups:
        groups[title] = p.add_argument_group(title)
    return groups[title]


def add_backend(p: argparse.ArgumentParser, default: str = "auto", help: Optional[str] = None,
                multiple: bool = False) -> None:
    """``--backend NAME`` (choices: ``auto`` and the registered backends), or with ``multiple`` a comma list
    the verb checks itself (``bench latency --backend torch,ort``)."""
    g = _group(p, EXTRACTOR)
    if multiple:
        g.add_argument("--backend", default=default, metavar="B1,B2",
                       help=(help or "extractor backends to run") + f": comma list of {', '.join(backend_names())} "
                            f"(default {default})")
        return
    g.add_argument("--backend", default=default, choices=choices(), metavar="{" + ",".join(choices()) + "}",
                   help=(help or "extractor backend") + f" (default {default}; auto: the fastest that works here, "
                                                         "docs/backends.md)")


def add_device(p: argparse.ArgumentParser, default: str = "cpu", help: Optional[str] = None) -> None:
    """``--device``: a torch device string (cpu, cuda, cuda:N, auto); the engine checks that it exists."""
    _group(p, EXTRACTOR).add_argument(
        "--device", default=default,
        help=(help or "extractor device") + f": cpu, cuda, cuda:N or auto (default {default})")


def add_threads(p: argparse.ArgumentParser, default: Optional[int] = None, help: Optional[str] = None) -> None:
    """``--threads N``: intra-op threads; at most 4 per CPU of this machine (checked when the verb runs)."""
    dflt = "the libraries' choice" if default is None else str(default)
    _group(p, RUNTIME).add_argument(
        "--threads", type=int, default=default, metavar="N",
        help=(help or "torch and extractor runtime threads") + f" (default: {dflt})")


def add_batch(p: argparse.ArgumentParser, flag: str = "--batch-size", default: Optional[int] = None,
              help: Optional[str] = None, type=int, metavar: str = "N") -> None:
    """The verb's batch-size flag (``--batch-size``, or ``--batch`` in the bench verbs), bounded by memory
    when the verb runs."""
    dflt = "" if default is None else f" (default: {default})"
    _group(p, RUNTIME).add_argument(flag, type=type, default=default, metavar=metavar,
                                    help=(help or "samples per batch") + dflt)


OUTPUT_KINDS = ("file", "dir", "prefix")


def output(action: argparse.Action, kind: str) -> argparse.Action:
    """Mark an option as a path lightcl writes (``file``; ``dir``: a directory it writes into; ``prefix``:
    PREFIX.safetensors + PREFIX.json): the one output rule applies to it (``engine.outpath``) and
    tests/test_output_paths.py finds every marked option in the parsers and tries hostile targets on it."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"output kind must be one of {OUTPUT_KINDS}")
    action.lightcl_output = kind  # type: ignore[attr-defined]
    return action


def add_json(p: argparse.ArgumentParser, help: Optional[str] = None, to_stdout: bool = False) -> None:
    """``--json OUT``: also write the verb's result to this file (atomically; never over lightcl's own
    files), or with ``to_stdout`` a switch that prints JSON instead of a table (``lightcl info``)."""
    g = _group(p, OUTPUT)
    if to_stdout:
        g.add_argument("--json", action="store_true", help=help or "print JSON instead of a table")
    else:
        output(g.add_argument("--json", default=None, metavar="OUT",
                              help=help or "also write the results to this JSON file"), "file")
