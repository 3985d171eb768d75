"""Extractor latency: each (backend, batch) timed in its own fresh Python process.

A separate process per configuration keeps the figures honest: peak RSS is that backend's alone,
session creation and the first run are really cold, and one runtime's thread pool cannot steal
cores from the next. The worker is :func:`measure`, run by the benchmark's one harness
(:func:`lightcl.bench.worker.run_worker`).

Per configuration: load (sha256 verification + session creation), first run, warm-up, then timed
iterations (``iters`` or ``seconds``) under ``torch.inference_mode()`` with the same intra-op
thread count for torch and onnxruntime, and the same waiting policy for both thread pools (no
spinning unless ``spin``: onnxruntime's ``allow_spinning`` and ``OMP_WAIT_POLICY`` for torch's
OpenMP pool). Reported: p50/p90/p99/mean ms, images/s (batch / mean),
session creation ms, first-run ms, peak RSS MiB (``getrusage`` high-water mark of the worker).
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .meters import peak_mib, rss_mib

DEFAULT_SECONDS = 2.0


def physical_cores() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except Exception:
        pass
    return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------ worker
def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this process (the worker side)."""
    import numpy as np
    import torch

    from lightcl.engine.extractors import load_extractor, options_for

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    backend, batch, device = spec["backend"], int(spec["batch"]), spec.get("device", "cpu")
    # each backend takes what its own options declare (tensorrt has no thread count, torch no spinning)
    opts = options_for(backend, threads=threads, spin=bool(spec.get("spin", False)),
                       graph_optimization=spec.get("graph_optimization") or None)
    rss_base = rss_mib()
    t0 = time.perf_counter()
    ext = load_extractor(spec["export_dir"], backend=backend, device=device, **opts)
    load_ms = (time.perf_counter() - t0) * 1e3
    info = ext.info()
    rss_loaded = rss_mib()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *ext.meta["input_shape"], generator=gen)
    cuda = torch.device(info.get("device", "cpu")).type == "cuda"
    if cuda:
        x = x.to(info["device"])

    def call():
        ext(x)
        if cuda:
            torch.cuda.synchronize()

    with torch.inference_mode():
        t = time.perf_counter()
        call()
        first_ms = (time.perf_counter() - t) * 1e3
        iters, seconds = spec.get("iters"), spec.get("seconds")
        warm = int(spec.get("warmup") if spec.get("warmup") is not None else (max(3, min(20, int(iters) // 10))
                                                                              if iters else 10))
        t_warm = time.perf_counter()
        for _ in range(warm):
            call()
            if seconds and time.perf_counter() - t_warm > max(0.5, float(seconds) / 4):
                break
        times: list[float] = []
        t_start = time.perf_counter()
        while True:
            t = time.perf_counter()
            call()
            times.append((time.perf_counter() - t) * 1e3)
            if iters:
                if len(times) >= int(iters):
                    break
            elif time.perf_counter() - t_start >= float(seconds or DEFAULT_SECONDS) and len(times) >= 5:
                break
    a = np.asarray(times)
    mean = float(a.mean())
    return {
        "backend": backend, "batch": batch, "iters": len(times), "warmup": warm,
        "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)), "mean_ms": mean, "min_ms": float(a.min()), "std_ms": float(a.std()),
        "images_per_s": batch / (mean / 1e3), "session_create_ms": info.get("session_create_ms"),
        "load_ms": load_ms, "first_run_ms": first_ms, "peak_rss_mib": peak_mib(),
        "rss_before_load_mib": rss_base, "rss_after_load_mib": rss_loaded, "threads": threads,
        "provider": info.get("provider"), "device": info.get("device"), "file": info.get("file"),
        "spin": info.get("spin"),
    }


# ------------------------------------------------------------------------------------------ parent
def environment(threads: int) -> dict[str, Any]:
    from lightcl.engine import runtime_info

    env = {k: v for k, v in runtime_info.collect().items() if k != "cuda_devices"}
    env["cuda_devices"] = runtime_info.cuda_devices()
    env["threads"] = threads
    env["physical_cores"] = physical_cores()
    env["cpu_model"] = _cpu_model()
    try:
        env["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    env["isolation"] = "one subprocess per (backend, batch)"
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_latency(export_dir: str | Path, backends: Sequence[str] = ("torch", "ort"), batches: Sequence[int] = (1, 32),
                iters: int | None = None, seconds: float | None = None, warmup: int | None = None,
                threads: int | None = None, device: str = "cpu", spin: bool = False,
                graph_optimization: str | None = None, timeout_s: float = 900.0, progress: bool = True,
                compare: Sequence[str | Path] = ()) -> dict:
    """Time every (backend, batch) in a fresh subprocess; return ``{"results": [...], "env": {...}}``.
    ``compare``: more export directories timed in the same run, interleaved (for every (backend, batch),
    each export in turn, so a shared machine's load drifts alike for all); each of their results gets
    ``p50_vs_first_export``, its p50 over the first export's at the same (backend, batch)."""
    from lightcl.engine.errors import InputError
    from lightcl.engine.export_dir import load_export_meta

    from lightcl.engine.extractors import BACKENDS

    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise InputError(f"unknown backend(s) {', '.join(bad)}; choose from {', '.join(BACKENDS)}")
    if any(int(b) < 1 for b in batches):
        raise InputError("batch sizes must be >= 1")
    if iters is not None and iters < 1:
        raise InputError("--iters must be >= 1")
    if seconds is not None and not seconds > 0:
        raise InputError(f"--seconds must be > 0, got {seconds}")
    if warmup is not None and warmup < 0:
        raise InputError(f"--warmup must be >= 0, got {warmup}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    dirs = [Path(d).absolute() for d in (export_dir, *compare)]
    export_dir = dirs[0]
    metas = [load_export_meta(d, verify=True) for d in dirs]  # fail here, once, rather than in every worker
    for d, meta_d in zip(dirs, metas):
        if "ort-int8" in backends and "frozen.int8.onnx" not in meta_d["files"]:
            raise InputError(f"{d} has no frozen.int8.onnx: export with --int8 to bench ort-int8")
    meta = metas[0]
    threads = int(threads or physical_cores())
    if iters is None and seconds is None:
        seconds = DEFAULT_SECONDS
    # Same waiting policy for both runtimes' thread pools: onnxruntime's spinning is off unless --spin, so
    # torch's OpenMP pool must not spin either (with spinning OpenMP threads, a loaded machine makes every
    # torch op wait for a time slice and eager torch looks 10-50x slower than it is).
    from .worker import run_worker

    omp_policy = os.environ.get("OMP_WAIT_POLICY", "ACTIVE" if spin else "PASSIVE")
    worker_env = {"OMP_WAIT_POLICY": omp_policy}
    results: list[dict] = []
    configs = [(b, int(n), i) for b in backends for n in batches for i in range(len(dirs))]
    t_all = time.perf_counter()
    for k, (backend, batch, i) in enumerate(configs, 1):
        spec = {"export_dir": str(dirs[i]), "backend": backend, "batch": batch, "iters": iters, "seconds": seconds,
                "warmup": warmup, "threads": threads, "device": device, "spin": spin,
                "graph_optimization": graph_optimization}
        if progress:
            what = f" {dirs[i].name}" if len(dirs) > 1 else ""
            print(f"[latency] {k}/{len(configs)}{what} {backend} batch {batch} ...", file=sys.stderr, end="", flush=True)
        t0 = time.perf_counter()
        run = run_worker("lightcl.bench.latency:measure", spec, env=worker_env, timeout=timeout_s)
        if run.ok:
            res = run.result
        else:  # one line: the worker's last stderr line (its error), or the timeout
            res = {"backend": backend, "batch": batch, "error": run.error,
                   "exit_code": -1 if run.timed_out else run.returncode}
        res["wall_s"] = round(time.perf_counter() - t0, 3)
        if len(dirs) > 1:
            res.update(export=dirs[i].name, export_dir=str(dirs[i]), export_index=i)
        results.append(res)
        if progress:
            msg = f" p50 {res['p50_ms']:.3f} ms" if "p50_ms" in res else f" FAILED: {res['error']}"
            print(msg, file=sys.stderr, flush=True)
    _add_ratios(results)
    return {"results": results, "env": environment(threads),
            "config": {"export_dir": str(export_dir), "compare": [str(d) for d in dirs[1:]], "backends": list(backends), "batches": [int(b) for b in batches],
                       "iters": iters, "seconds": seconds, "warmup": warmup, "threads": threads, "device": device,
                       "spin": spin, "omp_wait_policy": omp_policy, "graph_optimization": graph_optimization or "all",
                       "arch": meta.get("arch"), "width": meta.get("width"), "split": meta.get("split"),
                       "frozen_id": meta["frozen_id"], "int8": meta.get("int8", {}).get("top1_agreement")},
            "total_s": round(time.perf_counter() - t_all, 3)}


def _add_ratios(results: list[dict]) -> None:
    """p50 relative to torch (same batch) and int8 relative to ort fp32 (same batch), within one export;
    with several exports, also each one's p50 over the first export's (same backend and batch)."""
    p50 = {(r.get("export_index", 0), r["backend"], r["batch"]): r["p50_ms"] for r in results if "p50_ms" in r}
    for r in results:
        if "p50_ms" not in r:
            continue
        e = r.get("export_index", 0)
        t = p50.get((e, "torch", r["batch"]))
        if t:
            r["p50_vs_torch"] = r["p50_ms"] / t
        f = p50.get((e, "ort", r["batch"]))
        if f and r["backend"] == "ort-int8":
            r["p50_vs_ort_fp32"] = r["p50_ms"] / f
        first = p50.get((0, r["backend"], r["batch"]))
        if e > 0 and first:
            r["p50_vs_first_export"] = r["p50_ms"] / first


def format_table(report: dict) -> str:
    cols = [("backend", "{}"), ("batch", "{}"), ("p50 ms", "{:.3f}"), ("p90 ms", "{:.3f}"), ("p99 ms", "{:.3f}"),
            ("mean ms", "{:.3f}"), ("img/s", "{:.0f}"), ("create ms", "{:.1f}"), ("first ms", "{:.1f}"),
            ("peak RSS MiB", "{:.0f}"), ("vs torch", "{:.2f}x")]
    keys = ["backend", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "images_per_s", "session_create_ms",
            "first_run_ms", "peak_rss_mib", "p50_vs_torch"]
    many = any("export" in r for r in report["results"])
    if many:  # several exports in one run: name each row's export
        cols = [("export", "{}")] + cols + [("vs first", "{:.2f}x")]
        keys = ["export"] + keys + ["p50_vs_first_export"]
    rows = []
    for r in report["results"]:
        if "error" in r:
            lead = [r.get("export", ""), r["backend"], str(r["batch"])] if many else [r["backend"], str(r["batch"])]
            rows.append(lead + ["error: " + r["error"]] + [""] * (len(cols) - len(lead) - 1))
            continue
        row = []
        for (_, fmt), k in zip(cols, keys):
            v = r.get(k)
            row.append("-" if v is None else fmt.format(v))
        rows.append(row)
    widths = [max(len(c[0]), *(len(row[i]) for row in rows if i < len(row))) if rows else len(c[0])
              for i, c in enumerate(cols)]
    lines = ["  ".join(c[0].rjust(w) for c, w in zip(cols, widths))]
    for row in rows:
        n = 3 if many else 2
        if row[n].startswith("error"):
            lines.append("  ".join([v.rjust(w) for v, w in zip(row[:n], widths)] + [row[n]]))
        else:
            lines.append("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    e = report["env"]
    lines.append(f"threads {e.get('threads')}, {e.get('cpu_model')}, torch {e.get('torch')}, onnxruntime "
                 f"{e.get('onnxruntime')}; each configuration in its own process")
    for r in report["results"]:
        if "p50_vs_ort_fp32" in r:
            lines.append(f"{r['export'] + ': ' if many else ''}ort-int8 / ort fp32 p50 at batch {r['batch']}: "
                         f"{r['p50_vs_ort_fp32']:.2f}x")
    first = next((r["export"] for r in report["results"] if r.get("export_index") == 0), None)
    for r in report["results"]:
        if "p50_vs_first_export" in r:
            lines.append(f"{r['export']} / {first} p50 at {r['backend']} batch {r['batch']}: "
                         f"{r['p50_vs_first_export']:.2f}x")
    return "\n".join(lines)
