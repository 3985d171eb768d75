"""The one subprocess-worker harness of the benchmark: a callable run in a fresh interpreter.

The suite (a method-seed), ``bench latency`` (a backend x batch) and ``bench update`` (a mode) each
measure in a *fresh* process, so a figure is that run's alone (peak RSS, cold session, its own thread
pools). They all go through :func:`run_worker`:

* the child is ``python -m lightcl.bench.worker MODULE:FUNCTION SPEC.json RESULT.json``: it imports
  the function, calls ``function(spec)`` (plus ``progress=`` when the function takes it) and writes
  the returned dict with :func:`lightcl.engine.fileio.write_json_atomic` (a reader never sees half a
  result). A :class:`~lightcl.engine.errors.LightCLError` in the child is one stderr line and its
  exit code; anything else leaves its traceback in the log;
* progress: the child prints ``@@progress N`` lines on stdout; the parent calls ``on_progress(N)`` in
  its own thread as they arrive; every other stdout line and all of stderr go to the log;
* ``timeout`` bounds the whole run; on a timeout, an exception or a signal in the parent (Ctrl-C,
  SIGTERM) the child gets SIGTERM, then SIGKILL after ``term_grace`` seconds. The child stays in the
  parent's process group, so killing the group (a supervisor's ``kill -- -PGID``) takes it too;
* the outcome carries the result, or a one-line error and the last lines of the worker's log.

Ray (:mod:`lightcl.bench.executors`) only decides *where* this runs: its task calls the same function.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lightcl.engine.errors import LightCLError

PROGRESS = "@@progress"


class WorkerError(LightCLError):
    """A worker process failed or timed out; the message carries its last stderr lines."""


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


@dataclass
class WorkerOutcome:
    """What one worker run left: its result, or why there is none."""

    result: Optional[dict]
    returncode: Optional[int]
    error: Optional[str]  # one line; None when the run succeeded
    tail: list = field(default_factory=list)  # last non-empty lines of the worker's log (stderr + stray stdout)
    timed_out: bool = False
    wall_s: float = 0.0
    log: Optional[Path] = None  # the log file, when the caller asked to keep one

    @property
    def ok(self) -> bool:
        return self.result is not None

    def raise_for_error(self, what: str) -> dict:
        """The result, or :class:`WorkerError` ``"<what> failed (exit N): <last stderr lines>"``."""
        if self.ok:
            return self.result  # type: ignore[return-value]
        last = " | ".join(self.tail[-3:]) if self.tail else ""
        why = self.error if self.timed_out or not last else last
        raise WorkerError(f"{what} failed (exit {self.returncode}): {why}"
                          + (f" (log: {self.log})" if self.log else ""))


def _pump(stream, lines: "queue.Queue[Optional[str]]") -> None:
    try:
        for line in stream:
            lines.put(line)
    finally:
        lines.put(None)


def _stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaps the child either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, n: int) -> list[str]:
    from lightcl.engine.fileio import open_regular

    try:
        with open_regular(path, "worker log") as f:  # a regular file only (a FIFO swapped in must not block)
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - (1 << 20)))
            text = f.read().decode(errors="replace")
    except (OSError, LightCLError):
        return []
    return [ln for ln in text.strip().splitlines() if ln.strip()][-n:]


def run_worker(target: str, spec: dict, *, log_path: str | Path | None = None, env: dict | None = None,
               on_progress: Callable[[int], None] | None = None, timeout: float | None = None,
               tail_lines: int = 15, term_grace: float = 5.0, log_root: str | Path | None = None) -> WorkerOutcome:
    """Run ``target`` (``"package.module:function"``) on ``spec`` in a fresh interpreter; never raises for a
    failed worker (see :meth:`WorkerOutcome.raise_for_error`), only for the parent's own interruption.

    ``env``: variables set for the child on top of this process's (``PYTHONUNBUFFERED=1`` unless set);
    ``log_path``: keep the worker's log there (default: a temporary file, gone afterwards), opened under the
    one output rule (``engine.outpath.open_stream``: never through a link, never a FIFO; ``log_root``: the
    directory it is written into, e.g. the suite's OUT, never left through a link).
    """
    from lightcl.engine.outpath import open_stream

    if ":" not in target:
        raise ValueError(f"worker target must be 'module:function', got {target!r}")
    t0 = time.perf_counter()
    child_env = dict(os.environ)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    child_env.update({k: str(v) for k, v in (env or {}).items()})
    with tempfile.TemporaryDirectory(prefix="lightcl-worker-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec, default=_json_default))
        log = Path(log_path) if log_path is not None else Path(tmp) / "worker.log"
        cmd = [sys.executable, "-m", "lightcl.bench.worker", target, str(spec_path), str(out_path)]
        timed_out = False
        with open_stream(log, "worker log", root=log_root) as logf:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, text=True, env=child_env)
            lines: queue.Queue[Optional[str]] = queue.Queue()
            threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
            deadline = None if timeout is None else time.monotonic() + float(timeout)
            try:
                while True:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        timed_out = True
                        break
                    try:
                        line = lines.get(timeout=left)
                    except queue.Empty:
                        timed_out = True
                        break
                    if line is None:  # the child closed its stdout: it is exiting
                        break
                    if line.startswith(PROGRESS):
                        if on_progress is not None:
                            on_progress(int(line.split()[1]))
                    else:
                        logf.write(line)
                        logf.flush()
                if not timed_out:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    try:
                        proc.wait(timeout=left)
                    except subprocess.TimeoutExpired:
                        timed_out = True
                if timed_out:
                    _stop(proc, term_grace)
            except BaseException:  # Ctrl-C, SIGTERM (the CLI's Terminated), a failing callback: no orphan
                _stop(proc, term_grace)
                raise
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
        rc = proc.returncode
        tail = _tail(log, tail_lines)
        result = None
        error = None
        if timed_out:
            error = f"timed out after {float(timeout):.0f} s"
        elif rc != 0:
            error = tail[-1] if tail else f"worker exit {rc}"
        elif not out_path.is_file():
            error = "the worker exited 0 but wrote no result"
        else:
            result = json.loads(out_path.read_text())
    return WorkerOutcome(result=result, returncode=rc, error=error, tail=tail, timed_out=timed_out,
                         wall_s=time.perf_counter() - t0, log=Path(log_path) if log_path is not None else None)


# --------------------------------------------------------------------------- the child side
def _progress(n: int = 1) -> None:
    print(f"{PROGRESS} {int(n)}", flush=True)


def child_main(argv: list[str]) -> int:
    """``python -m lightcl.bench.worker MODULE:FUNCTION SPEC.json RESULT.json``."""
    if len(argv) != 3:
        print("usage: python -m lightcl.bench.worker MODULE:FUNCTION SPEC.json RESULT.json (internal)", file=sys.stderr)
        return 2
    target, spec_path, out_path = argv
    module, _, name = target.partition(":")
    func = getattr(importlib.import_module(module), name)
    spec = json.loads(Path(spec_path).read_text())
    kwargs = {"progress": _progress} if "progress" in inspect.signature(func).parameters else {}
    try:
        result = func(spec, **kwargs)
    except LightCLError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return int(getattr(e, "exit_code", 1))
    from lightcl.engine.fileio import write_json_atomic

    write_json_atomic(out_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
