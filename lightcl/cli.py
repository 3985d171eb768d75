"""``lightcl`` command line: one verb per module in ``lightcl.commands``.

Errors lightcl raises on purpose (``LightCLError``) print as one line with a non-zero exit code;
only genuine bugs show a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (module, one-line help). A verb whose module does not exist yet says so and exits 2.
VERBS: dict[str, tuple[str, str]] = {
    "info": ("lightcl.commands.info", "versions, execution providers that really work, devices"),
    "pretrain": ("lightcl.commands.pretrain", "train a backbone on a dataset (safetensors + json)"),
    "export": ("lightcl.commands.export", "split a checkpoint: frozen part to ONNX (int8, TensorRT), head to safetensors"),
    "learn": ("lightcl.commands.learn", "learn continually with LightCL: a built-in scenario, or lessons from your own image folder"),
    "predict": ("lightcl.commands.predict", "predict labels with a learned state"),
    "bench": ("lightcl.commands.bench", "benchmarks: latency, update, and method suites"),
    "analyze": ("lightcl.commands.analyze", "layer analysis: learning plasticity and memory stability per block"),
    "demo": ("lightcl.commands.demo", "the offline scenario end to end: pretrain, export, learn, report"),
}


def _load(verb: str):
    mod, _ = VERBS[verb]
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name == mod:
            return None
        raise


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line on stderr (exit 2), like every other lightcl error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """``only``: import just that verb's module (the one being run): a device running `lightcl predict`
    never imports the host-side verbs (docs/device-floor.md)."""
    from lightcl import __version__

    parser = _Parser(
        prog="lightcl",
        description="Edge continual learning: frozen feature extractor (ONNX Runtime / TensorRT) + trainable head.",
    )
    parser.add_argument("--version", action="version", version=f"lightcl {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    modules = {}
    for verb, (_, help_) in VERBS.items():
        if only is not None and verb != only:
            sub.add_parser(verb, help=help_)
            continue
        mod = _load(verb)
        modules[verb] = mod
        p = sub.add_parser(verb, help=help_ + ("" if mod else " [not built yet]"),
                           description=getattr(mod, "DESCRIPTION", help_))
        if mod is not None:
            mod.add_arguments(p)
    return parser, modules


MAX_MESSAGE = 600  # characters of an error line; torch's multi-line reports were printed whole


def one_line(message: str) -> str:
    """An error message as one line: newlines (torch's embedded reports, file names) become spaces."""
    text = " ".join(str(message).split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


class Terminated(BaseException):
    """SIGTERM as an exception: writers roll back their half-done swap (recovery would also) and we exit 143."""


def _on_sigterm(_signum, _frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    from lightcl.engine.errors import LightCLError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser, modules = build_parser(argv[0] if argv and argv[0] in VERBS else None)
    if argv and argv[0] in modules and hasattr(modules[argv[0]], "rewrite_argv"):
        argv = [argv[0], *modules[argv[0]].rewrite_argv(argv[1:])]
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 0
    mod = modules[args.verb]
    if mod is None:
        print(f"lightcl {args.verb}: not built yet", file=sys.stderr)
        return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(mod.run(args) or 0)
    except LightCLError as e:
        print(f"lightcl {args.verb}: error: {one_line(str(e))}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except KeyboardInterrupt:
        print(f"lightcl {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"lightcl {args.verb}: terminated (SIGTERM); the last saved state is kept", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
