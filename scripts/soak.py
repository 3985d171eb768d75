#!/usr/bin/env python
"""Soak: many continual-learning tasks in one process; does resident memory grow?

Each task brings two fresh class ids (2t, 2t+1) over real digits images (digit classes cycle, the
ids never repeat), so the expandable classifier (``num_classes=None``) grows by two rows per task,
while the feature-pattern buffer and the vital-channel masks must stay the same size. Per task:
``begin_task`` -> ``steps`` x ``observe`` -> ``end_task`` -> ``predict`` (TIL and CIL) -> ``save``
(every ``save_every`` tasks).
After every task (the heap that existed before the loop is ``gc.freeze()``-d, so the collection is cheap):
``gc.collect()``, ``malloc_trim(0)`` (glibc: hand freed heap back, so RSS shows
live memory rather than the allocator's cache) and RSS. The slope is a least-squares fit of RSS over
the tasks after ``warmup``, in MiB per task, next to what the growth of the classifier accounts for.

    .venv/bin/python scripts/soak.py                 # 500 tasks, width-16 digits export (made if needed)
    .venv/bin/python scripts/soak.py --tasks 1000 --export DIR --json soak.json

tests/test_soak.py runs the same function for 50 tasks and bounds the slope.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lightcl.bench.meters import malloc_trim, rss_mib

MIB = 2.0 ** 20


def slope(xs, ys) -> float:
    """Least-squares slope of ys over xs."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def run_soak(export_dir: str | Path, tasks: int = 300, steps: int = 3, batch: int = 16, warmup: int = 10,
             state_dir: str | Path | None = None, backend: str = "ort", save_every: int = 1, progress=None) -> dict:
    from lightcl.data.datasets import load_dataset
    from lightcl.data.tasks import TensorData
    from lightcl.data.transforms import Preprocess
    from lightcl.engine.export_dir import load_export_meta, load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL

    meta = load_export_meta(export_dir)
    pre = Preprocess(meta["normalization"]["mean"], meta["normalization"]["std"])
    data = TensorData(load_dataset("digits", "train"))
    y_all = data.y.numpy()
    by_digit = {d: np.flatnonzero(y_all == d) for d in range(10)}
    ext = load_extractor(export_dir, backend=backend, threads=1)
    lr = LightCL(ext, load_head(export_dir), num_classes=None, momentum=0.9, seed=0)
    rng = np.random.default_rng(0)
    tmp = None
    if state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lightcl-soak-")
        state_dir = Path(tmp.name) / "state"
    rows, mem_bytes, buf_len, mask_bytes = [], [], [], []
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()  # the heap of the imports is not the soak's: per-task collections scan only newer objects
    try:
        for t in range(tasks):
            digits = [(2 * t) % 10, (2 * t + 1) % 10]
            ids = [2 * t, 2 * t + 1]
            lr.begin_task(t, ids)
            for _ in range(steps):
                idx = np.concatenate([rng.choice(by_digit[d], size=batch // 2, replace=False) for d in digits])
                b = torch.as_tensor(idx)
                y = torch.where(data.y[b] == digits[0], ids[0], ids[1])
                lr.observe(pre(data.x[b]), y)
            lr.end_task()
            probe = pre(data.x[torch.as_tensor(idx[:8])])
            assert set(lr.predict(probe, mode="til", task_id=t).tolist()) <= set(ids)
            lr.predict(probe)
            if (t + 1) % save_every == 0:
                lr.save(state_dir)
            gc.collect()
            malloc_trim()
            rows.append(rss_mib())
            mem_bytes.append(lr.memory.nbytes())
            buf_len.append(len(lr.memory))
            mask_bytes.append(sum(m.numel() for m in lr.memory.masks.values()))
            if progress and (t + 1) % max(1, tasks // 10) == 0:
                progress(f"task {t + 1}/{tasks}: RSS {rows[-1]:.1f} MiB, classes {lr.head.num_classes}, "
                         f"{time.perf_counter() - t0:.0f} s")
    finally:
        gc.unfreeze()
        if tmp is not None:
            tmp.cleanup()
    xs = list(range(warmup, tasks))
    fit = slope(xs, rows[warmup:]) if len(xs) >= 2 else float("nan")
    feat_dim = lr.head.fc.in_features
    # per task: 2 classifier rows (+bias) as weights, gradients and momentum; 2 more logits per buffered target
    expected = (2 * (feat_dim + 1) * 4 * 3 + 2 * 4 * max(buf_len)) / MIB
    return {
        "tasks": tasks, "steps_per_task": steps, "batch": batch, "warmup": warmup, "backend": backend,
        "save_every": save_every,
        "rss_mib": rows, "rss_slope_mib_per_task": fit, "expected_slope_mib_per_task": expected,
        "rss_first_mib": rows[warmup] if len(rows) > warmup else None, "rss_last_mib": rows[-1] if rows else None,
        "classes": lr.head.num_classes, "buffer_len": buf_len, "memory_bytes": mem_bytes, "mask_elements": mask_bytes,
        "wall_s": time.perf_counter() - t0,
    }


def _default_export() -> Path:
    from lightcl.bench.pipeline import ensure_backbone, ensure_export
    from lightcl.bench.scenarios import get_scenario

    s = get_scenario("smoke")
    return ensure_export(ensure_backbone(s, echo=lambda m: print(m, file=sys.stderr)), split=s.split,
                         echo=lambda m: print(m, file=sys.stderr))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--export", default=None, help="export directory (default: the smoke scenario's, made if needed)")
    p.add_argument("--tasks", type=int, default=500)
    p.add_argument("--steps", type=int, default=3, help="observe() calls per task")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=10, help="tasks left out of the slope fit")
    p.add_argument("--backend", default="ort")
    p.add_argument("--save-every", type=int, default=1, help="save the state every N tasks (1)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    export = Path(args.export) if args.export else _default_export()
    res = run_soak(export, tasks=args.tasks, steps=args.steps, batch=args.batch, warmup=args.warmup,
                   backend=args.backend, save_every=args.save_every, progress=lambda m: print(m, file=sys.stderr))
    print(f"{res['tasks']} tasks, {res['classes']} classes: RSS {res['rss_first_mib']:.1f} -> {res['rss_last_mib']:.1f} MiB, "
          f"slope {res['rss_slope_mib_per_task']:.4f} MiB/task (classifier growth accounts for "
          f"{res['expected_slope_mib_per_task']:.4f}); buffer {max(res['buffer_len'])} samples, "
          f"{res['wall_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
