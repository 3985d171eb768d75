"""``lightcl demo``: the offline scenario end to end, no flags needed."""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from lightcl.commands import _args

DESCRIPTION = ("The main job, end to end: pretrain a backbone (cached in ~/.cache/lightcl), export its frozen "
               "part to ONNX, learn the scenario's tasks continually with the onnxruntime extractor, and report "
               "accuracy, forgetting, update-step time, peak memory and extractor latency.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", default="offline", help="offline (default), offline-hard, smoke, ...")
    p.add_argument("--epochs", type=int, default=None, help="epochs per task (default: the scenario's)")
    _args.output(p.add_argument("--out", default="runs/demo", help="where the state and results go (default runs/demo)"),
                 "dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _args.add_backend(p, default="ort", help="extractor backend for learning")


def _latency_ms(extractor, shape, iters: int = 50) -> float:
    import torch

    x = torch.randn(1, *shape)
    for _ in range(5):
        extractor(x)
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        extractor(x)
        ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts)


def run(args: argparse.Namespace) -> int:
    from lightcl.bench.pipeline import ensure_backbone, ensure_dataset, ensure_export
    from lightcl.bench.runner import learn_scenario
    from lightcl.bench.scenarios import get_scenario
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.fileio import write_json_atomic

    from lightcl.commands._safety import check_output_dir

    check_output_dir(args.out)
    t0 = time.perf_counter()
    s = get_scenario(args.scenario, epochs=args.epochs)
    print(f"lightcl demo: scenario {s.name}: {s.description}")
    ensure_dataset(s.cl_dataset)
    ckpt = ensure_backbone(s, progress=not args.quiet)
    export_dir = ensure_export(ckpt, s.split, progress=not args.quiet)
    out = Path(args.out)
    state = out / "state"
    n = 1
    while state.exists():  # an earlier demo's state is kept, never overwritten: this run learns beside it
        n += 1
        state = out / f"state-{n}"
    print(f"learning {s.n_tasks} tasks x {s.classes_per_task} classes of {s.cl_dataset}, {s.epochs} epochs/task, "
          f"backend {args.backend} ...")
    res = learn_scenario(export_dir, s, state, backend=args.backend, progress=not args.quiet)
    ext = load_extractor(export_dir, backend=args.backend)
    res["extractor_p50_ms_batch1"] = _latency_ms(ext, ext.meta["input_shape"])
    res["demo_wall_s"] = time.perf_counter() - t0
    write_json_atomic(out / "results.json", res)
    rows = [
        ("final accuracy, task-incremental", f"{100 * res['final_til']:.2f} %"),
        ("final accuracy, class-incremental", f"{100 * res['final_cil']:.2f} %"),
        ("forgetting (TIL / CIL)", f"{100 * res['forgetting_til']:.2f} / {100 * res['forgetting_cil']:.2f} points"),
        ("update step, median (batch %d)" % s.batch_size, f"{res['step_ms']:.1f} ms"),
        ("peak memory (process RSS)", f"{res['peak_rss_mib']:.0f} MiB"),
        ("feature memory (buffer + masks)", f"{res['memory']['memory_bytes'] / 1024:.0f} KiB"),
        (f"extractor latency p50, batch 1 ({res['extractor'].get('provider', args.backend)})",
         f"{res['extractor_p50_ms_batch1']:.2f} ms"),
        ("demo wall time", f"{res['demo_wall_s']:.0f} s"),
    ]
    w = max(len(k) for k, _ in rows)
    print("\n" + "-" * (w + 16))
    for k, v in rows:
        print(f"{k:<{w}}  {v:>12}")
    print("-" * (w + 16))
    print(f"backbone:  {ckpt}.safetensors (+ .json)")
    print(f"export:    {export_dir}  (frozen.onnx, head.safetensors, meta.json)")
    print(f"state:     {state}  (resume with: lightcl learn {export_dir} --scenario {s.name} --state {state} --resume)")
    print(f"results:   {out / 'results.json'}")
    return 0
