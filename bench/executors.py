"""Where the suite's method-seed runs execute: one after another on this machine, or as Ray tasks.

Both executors call the same :func:`run_suite_job`, which runs the job's ``target`` (the suite's
``run_one``, named by the suite: this module imports nothing of it) through the benchmark's one subprocess harness
(:func:`lightcl.bench.worker.run_worker`: fresh interpreter, progress lines, atomic JSON result,
timeout, SIGTERM/SIGKILL cleanup), so every run is metered the same whichever executor started it. The Ray executor only
decides *where* that interpreter starts: each run is a Ray task that declares ``num_cpus`` =
the run's threads (and ``num_gpus=1`` for a CUDA device), on a local Ray instance by default or
on an existing cluster (``address``).

On a cluster, the worker nodes must see the checkpoint, the export and the dataset at the same
paths as the driver (a shared filesystem, or the same ``~/.cache/lightcl`` contents) and have
lightcl installed; records and logs come back to the driver, which writes them under ``OUT``.
"""
from __future__ import annotations

import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

EXECUTORS = ("local", "ray")


@dataclass
class Job:
    """One method-seed run: the worker function (``"module:function"``), its spec and where its log goes."""

    method: str
    seed: int
    spec: dict
    log_path: Path
    weight: float = 1.0
    extra: dict = field(default_factory=dict)
    target: str = ""  # the suite's run_one; required (the suite passes it)
    root: Optional[Path] = None  # the suite's OUT: logs are never written through a link out of it


def run_suite_job(target: str, spec: dict, log_path: Path, on_progress: Callable[[int], None] | None = None,
                  timeout: float | None = None, log_root: Path | None = None) -> dict:
    """Run one method-seed (``target``, ``"module:function"``) in a fresh interpreter; returns its record
    (status 'failed' on error)."""
    from lightcl.bench.worker import run_worker as run_in_worker

    if not target:
        raise ValueError("a suite job needs its target function ('module:function')")
    env = {}
    if spec.get("threads"):
        env = {var: str(spec["threads"]) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = run_in_worker(target, spec, log_path=log_path, env=env, on_progress=on_progress, timeout=timeout,
                        log_root=log_root)
    if out.ok:
        return out.result
    error = "\n".join(out.tail) if out.tail and not out.timed_out else (out.error or "")
    return {"method": spec["method"], "seed": spec["seed"], "status": "failed", "returncode": out.returncode,
            "error": error, "wall_s": out.wall_s, "log": str(log_path)}


OnDone = Callable[[Job, dict], None]
OnTick = Callable[[Job, int], None]


def run_local(jobs: list[Job], on_done: OnDone, on_tick: Optional[OnTick] = None) -> None:
    """Run the jobs one after another, each in its own subprocess (the default executor)."""
    for job in jobs:
        tick = (lambda n, job=job: on_tick(job, n)) if on_tick else None
        on_done(job, run_suite_job(job.target, job.spec, job.log_path, tick, log_root=job.root))


def _ray_job(target: str, spec: dict, log_name: str) -> tuple[dict, str]:
    """Body of one Ray task: the ordinary subprocess worker, log returned to the driver as text."""
    with tempfile.TemporaryDirectory(prefix="lightcl-ray-") as tmp:
        log = Path(tmp) / log_name
        rec = run_suite_job(target, spec, log)
        text = log.read_text(errors="replace") if log.is_file() else ""
    rec["node"] = socket.gethostname()
    return rec, text


def ray_resources(spec: dict) -> dict:
    """The CPU/GPU needs a run declares to Ray: its thread count, one GPU for a CUDA device."""
    cpus = int(spec.get("threads") or 1)
    gpus = 1 if str(spec.get("device", "cpu")).startswith("cuda") else 0
    return {"num_cpus": max(1, cpus), "num_gpus": gpus}


def run_ray(jobs: list[Job], on_done: OnDone, address: Optional[str] = None, num_cpus: Optional[int] = None,
            echo: Callable[[str], None] = print) -> None:
    """Run the jobs as Ray tasks; ``on_done`` is called in the driver as each one finishes.

    ``address``: an existing cluster (``auto``, ``ray://host:10001``, ``host:6379``); ``None`` starts a
    local instance with ``num_cpus`` CPUs (default: all) that is shut down at the end.
    """
    from lightcl.engine.optional import require

    ray = require("ray", needed_for="--executor ray", install="pip install 'lightcl[ray]'")
    import logging

    own = not ray.is_initialized()
    if own:
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                              "configure_logging": True}
        if address:
            kw["address"] = address
        else:
            # a fresh local instance of our own, never somebody's RAY_ADDRESS by accident
            kw.update(address="local", num_cpus=num_cpus, object_store_memory=80 * 2 ** 20)
        t0 = time.perf_counter()
        if address:
            from .ray_address import check_address

            check_address(address)  # never a ray.init that retries forever
        try:
            ray.init(**kw)
        except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:  # Ray's own refusals: one line
            from lightcl.engine.errors import StateError

            raise StateError(f"ray: cannot {'connect to ' + address if address else 'start a local instance'} "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
        res = ray.cluster_resources()
        echo(f"ray: {'connected to ' + address if address else 'local instance'} in {time.perf_counter() - t0:.1f} s; "
             f"{res.get('CPU', 0):g} CPU(s), {res.get('GPU', 0):g} GPU(s)")
    try:
        remote = ray.remote(_ray_job)
        pending = {}
        for job in jobs:
            need = ray_resources(job.spec)
            ref = remote.options(name=f"lightcl {job.method} seed {job.seed}", max_retries=0, **need) \
                .remote(job.target, job.spec, job.log_path.name)
            pending[ref] = job
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                rec, text = ray.get(ready[0])
            except Exception as e:  # the task itself died (node lost, worker killed): a failed record
                rec = {"method": job.method, "seed": job.seed, "status": "failed", "returncode": None,
                       "error": f"ray task failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                text = str(e)
            from lightcl.engine.fileio import write_bytes_atomic

            write_bytes_atomic(job.log_path, text.encode(), root=job.root)  # the one output rule: no link out of OUT
            if rec.get("status") != "ok":
                rec["log"] = str(job.log_path)
            on_done(job, rec)
    finally:
        if own:
            ray.shutdown()
