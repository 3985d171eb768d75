#!/usr/bin/env python
"""What the engine's two remaining departures from the authors' code change, measured (docs/learner.md).

1. Eval-mode frozen BN (the engine's default, the exported ONNX): the smoke scenario learned three
   ways in one process, per seed: the authors' mode (torch extractor, ``frozen_bn="train"``), the
   engine's default BN on the same torch extractor, and the engine's default (onnxruntime, the export).
   Final TIL/CIL (average over tasks after the last one) and median step time; then the step time of
   each mode again with their steps interleaved on one batch (the ratio to trust on a busy machine).
2. Features, not images, in the buffer (eval-mode BN only): how far the buffer's features taken as rows
   of the batch are from the buffer pushed through the frozen part on its own (float noise), what the
   re-extraction would cost per step, and the buffer's bytes both ways.

    .venv/bin/python scripts/faithful_departures.py                  # smoke export (made if needed), seeds 0,1,2
    .venv/bin/python scripts/faithful_departures.py --export DIR --seeds 0 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

MODES = (("authors: torch, frozen_bn=train", "torch", {"frozen_bn": "train"}),
         ("engine BN: torch, frozen_bn=eval", "torch", {}),
         ("engine default: ort (the export)", "ort", {}))


def _default_export() -> Path:
    from lightcl.bench.pipeline import ensure_backbone, ensure_export
    from lightcl.bench.scenarios import get_scenario

    s = get_scenario("smoke")
    return ensure_export(ensure_backbone(s, echo=lambda m: print(m, file=sys.stderr)), split=s.split,
                         echo=lambda m: print(m, file=sys.stderr))


def learn_runs(export: Path, seeds: list[int], epochs: int | None) -> list[dict]:
    from lightcl.bench.runner import learn_scenario
    from lightcl.bench.scenarios import get_scenario

    scenario = get_scenario("smoke", epochs=epochs)
    rows = []
    for seed in seeds:
        for name, backend, ext_opts in MODES:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                res = learn_scenario(export, scenario, Path(tmp) / "state", backend=backend,
                                     learner_options={"seed": seed}, extractor_options=ext_opts,
                                     progress=False, echo=lambda m: None)
            rows.append({"mode": name, "seed": seed, "final_til": res["final_til"], "final_cil": res["final_cil"],
                         "step_ms": res["step_ms"], "buffer_bytes": res["memory"]["memory_bytes"]})
            print(f"seed {seed} {name}: TIL {100 * res['final_til']:.1f}%  CIL {100 * res['final_cil']:.1f}%  "
                  f"step {res['step_ms']:.1f} ms  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return rows


def interleaved_steps(export: Path, rounds: int = 40, batch: int = 32) -> dict:
    """Median step time of each mode in a task with a buffer, the modes' steps interleaved on the same batch
    (a noisy machine slows all modes alike)."""
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL

    g = torch.Generator().manual_seed(0)
    learners = {}
    for name, backend, ext_opts in MODES:
        ext = load_extractor(export, backend, **ext_opts)
        learners[name] = LightCL(ext, load_head(export), num_classes=4)
    x = torch.randn(batch, *learners[MODES[0][0]].input_shape, generator=g)
    y0, y1 = torch.tensor([0, 1] * (batch // 2)), torch.tensor([2, 3] * (batch // 2))
    for lr in learners.values():
        lr.begin_task(0, [0, 1])
        lr.observe(x, y0)
        lr.end_task(x)
        lr.begin_task(1, [2, 3], x, y1)
    times = {name: [] for name in learners}
    for i in range(rounds + 3):
        for name, lr in learners.items():
            ms = lr.observe(x, y1)["step_ms"]
            if i >= 3:
                times[name].append(ms)
    return {name: statistics.median(t) for name, t in times.items()}


def features_vs_images(export: Path, buffer: int = 15, batch: int = 32, iters: int = 30) -> dict:
    """Eval-mode BN: rows of the batch's features vs the buffer on its own; the cost of re-extracting it."""
    from lightcl.engine.extractors import load_extractor

    g = torch.Generator().manual_seed(0)
    out = {}
    for backend in ("torch", "ort"):
        ext = load_extractor(export, backend)
        x = torch.randn(batch, *ext.input_shape, generator=g)
        rows = ext(x)[:buffer]
        alone = ext(x[:buffer])
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            ext(x[:buffer])
            times.append((time.perf_counter() - t) * 1e3)
        out[backend] = {"max_abs_diff": float((rows - alone).abs().max()),
                        "max_abs_feature": float(rows.abs().max()),
                        "reextract_ms": statistics.median(times)}
        feature_shape, input_shape = ext.feature_shape, ext.input_shape
    numel = lambda s: int(torch.tensor(s).prod())  # noqa: E731
    out["buffer_bytes"] = {"features": buffer * numel(feature_shape) * 4, "images": buffer * numel(input_shape) * 4,
                           "feature_shape": list(feature_shape), "input_shape": list(input_shape)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", default=None, help="export directory (default: the smoke scenario's, made if needed)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated learner seeds (shuffling, classifier init)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per task (default: the scenario's, 3)")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    export = Path(args.export) if args.export else _default_export()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = learn_runs(export, seeds, args.epochs)
    fvi = features_vs_images(export)
    steps = interleaved_steps(export)
    print("\n| mode | final TIL % | final CIL % | median step ms (learn runs) | interleaved step ms "
          "| step / authors' |")
    print("|---|---|---|---|---|---|")
    base = steps[MODES[0][0]]
    summary = {}
    for name, _, _ in MODES:
        rs = [r for r in rows if r["mode"] == name]
        til = [100 * r["final_til"] for r in rs]
        cil = [100 * r["final_cil"] for r in rs]
        step = statistics.mean(r["step_ms"] for r in rs)
        summary[name] = {"til": til, "cil": cil, "step_ms": step, "interleaved_step_ms": steps[name]}
        print(f"| {name} | {statistics.mean(til):.1f} ({', '.join(f'{v:.1f}' for v in til)}) | "
              f"{statistics.mean(cil):.1f} ({', '.join(f'{v:.1f}' for v in cil)}) | {step:.1f} | "
              f"{steps[name]:.1f} | {steps[name] / base:.2f} |")
    b = fvi["buffer_bytes"]
    print(f"\nfeatures vs images (eval-mode BN, buffer 15 of a batch of 32): "
          f"torch max |rows - alone| {fvi['torch']['max_abs_diff']:.2e} (features up to {fvi['torch']['max_abs_feature']:.1f}), "
          f"ort {fvi['ort']['max_abs_diff']:.2e}; re-extracting the buffer each step would cost "
          f"{fvi['torch']['reextract_ms']:.2f} ms (torch) / {fvi['ort']['reextract_ms']:.2f} ms (ort); "
          f"buffer {b['features'] / 1024:.0f} KiB as features {b['feature_shape']} vs {b['images'] / 1024:.0f} KiB "
          f"as images {b['input_shape']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"export": str(export), "seeds": seeds, "runs": rows,
                                               "summary": summary, "features_vs_images": fvi}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
