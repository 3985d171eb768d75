"""``lightcl bench update``: one update step, measured per mode, each mode in a fresh subprocess.

Modes (same data, same head):
- ``lightcl``            the engine, onnxruntime extractor, buffer kept as frozen features
- ``lightcl-torch``      the engine, torch extractor
- ``lightcl-reference``  the authors' procedure: whole model in torch, train mode, buffer images pushed
                         through the whole model every step
- ``finetune``           the whole model trained with cross-entropy
- ``lightcl-int8``       (opt-in) the engine with the int8 extractor (an export made with ``--int8``)

Peak RSS is measured above the worker's RSS right after its imports (the idle process), so the
interpreter and libraries do not count; theoretical memory follows the paper's accounting.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("lightcl", "lightcl-torch", "lightcl-reference", "finetune", "lightcl-int8")
DEFAULT_MODES = MODES[:4]


def compose_backbone(export_dir: str | Path):
    """The whole pretrained model, rebuilt from ``frozen.safetensors`` + ``head.safetensors``."""
    from lightcl.engine.export_dir import export_file, load_export_meta, load_head
    from lightcl.engine.frozen import load_frozen
    from lightcl.export.zoo import create_backbone

    meta = load_export_meta(export_dir)
    frozen, _ = load_frozen(export_file(export_dir, meta, "frozen.safetensors"))
    head = load_head(export_dir)
    model = create_backbone(meta.get("arch", "resnet18"), num_classes=head.num_classes, width=int(meta["width"]))
    k = len(frozen.blocks) - 1
    for i, b in enumerate(frozen.blocks):
        model.blocks[i].load_state_dict(b.state_dict())
    for j, b in enumerate(head.blocks):
        model.blocks[k + 1 + j].load_state_dict(b.state_dict())
    model.fc.load_state_dict(head.fc.state_dict())
    return model, k, meta


def worker(mode: str, export_dir: str, data_file: str, steps: int, warmup: int, threads: int | None) -> dict:
    """Runs inside the subprocess: build ``mode``, take ``warmup + steps`` update steps, measure."""
    import torch
    from safetensors.torch import load_file

    from lightcl.bench.accounting import count_activations, theoretical_mib
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL

    if threads:
        torch.set_num_threads(threads)
    from lightcl.bench.meters import malloc_trim, peak_mib, rss_mib, warm_up

    warm_up((3, 32, 32))  # the same idle baseline as the suite: libraries initialised, freed heap returned
    malloc_trim()
    idle = rss_mib()
    d = load_file(data_file)
    xa, ya, xb, yb = d["xa"], d["ya"], d["xb"], d["yb"]
    ca, cb = sorted(set(ya.tolist())), sorted(set(yb.tolist()))
    n_classes = max(ca + cb) + 1
    times = []
    if mode in ("lightcl", "lightcl-torch", "lightcl-int8"):
        backend = {"lightcl": "ort", "lightcl-int8": "ort-int8", "lightcl-torch": "torch"}[mode]
        opts = {"threads": threads} if threads else {}
        if backend != "torch":
            opts["spin"] = False
        ext = load_extractor(export_dir, backend=backend, **opts)
        learner = LightCL(ext, load_head(export_dir), num_classes=n_classes)
        learner.begin_task(0, ca)
        learner.observe(xa, ya)
        learner.end_task()
        learner.begin_task(1, cb)
        for i in range(warmup + steps):
            t = time.perf_counter()
            learner.observe(xb, yb)
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000)
        peak = peak_mib()  # before the accounting below allocates anything
        head = learner.head
        feats = learner.extract(torch.cat([xb, xb[:learner.config.buffer_size]]))
        weights = sum(p.numel() for p in head.parameters()) + sum(
            p.numel() for p in _frozen_params(export_dir))
        trainable = sum(p.numel() for p in head.parameters())
        acts = count_activations(head, feats)
        info = ext.info()
    else:
        from lightcl.bench.reference import ReferenceLightCL
        from lightcl.bench.update import compose_backbone

        model, k, _ = compose_backbone(export_dir)
        if mode == "lightcl-reference":
            ref = ReferenceLightCL(model, k, n_classes)
            ref.begin_task(ca)
            ref.observe(xa, ya)
            ref.end_task()
            ref.begin_task(cb, xb, yb)
            step = lambda: ref.observe(xb, yb)  # noqa: E731
            trainable = sum(p.numel() for p in ref.trainable)
            head_mods = torch.nn.Sequential(*model.blocks[k + 1:])
            with torch.no_grad():
                f = torch.cat([xb, xb[:15]])
                for b in model.blocks[:k + 1]:
                    f = b(f)
            acts = count_activations(head_mods, f) + (len(xb) + 15) * n_classes
        else:
            import torch.nn.functional as F

            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            model.train()
            lut = torch.full((n_classes,), -1, dtype=torch.long)
            lut[torch.tensor(cb)] = torch.arange(len(cb))

            def step():
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb)[:, cb], lut[yb])
                loss.backward()
                opt.step()

            trainable = sum(p.numel() for p in model.parameters())
            acts = count_activations(model, xb)
        for i in range(warmup + steps):
            t = time.perf_counter()
            step()
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000)
        peak = peak_mib()
        weights = sum(p.numel() for p in model.parameters())
        info = {"backend": "torch", "threads": torch.get_num_threads()}
    times.sort()
    return {
        "mode": mode, "steps": steps, "batch": int(len(xb)),
        "step_ms": statistics.median(times), "step_ms_p90": times[int(0.9 * (len(times) - 1))],
        "step_ms_mean": statistics.fmean(times),
        "idle_rss_mib": idle, "peak_rss_mib": peak, "peak_rss_delta_mib": peak - idle,
        "theoretical_mib": theoretical_mib(weights, trainable, acts),
        "weights": weights, "trainable_params": trainable, "activations": acts, "extractor": info,
    }


def _frozen_params(export_dir):
    from lightcl.engine.export_dir import export_file, load_export_meta
    from lightcl.engine.frozen import load_frozen

    net, _ = load_frozen(export_file(export_dir, load_export_meta(export_dir, verify=False), "frozen.safetensors"))
    return list(net.parameters())


def prepare_data(export_dir: str | Path, batch: int, out: Path, data_path: str | None = None) -> Path:
    """Two real batches of the export's dataset (task A: classes 0,1; task B: classes 2,3), normalised."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from lightcl.bench.data import load_dataset
    from lightcl.bench.tasks import TensorData
    from lightcl.bench.transforms import Preprocess
    from lightcl.engine.export_dir import load_export_meta

    meta = load_export_meta(export_dir, verify=False)
    td = TensorData(load_dataset(meta["dataset"], "train", data_path))
    pre = Preprocess(meta["normalization"]["mean"], meta["normalization"]["std"])
    rng = np.random.default_rng(0)
    y = td.y.numpy()
    tensors = {}
    for key, cls in (("a", [0, 1]), ("b", [2, 3])):
        idx = np.flatnonzero(np.isin(y, cls))
        idx = rng.choice(idx, size=batch, replace=len(idx) < batch)
        tensors[f"x{key}"] = pre(td.x[torch.as_tensor(idx)]).contiguous()
        tensors[f"y{key}"] = td.y[torch.as_tensor(idx)].contiguous()
    save_file(tensors, str(out))
    return out


def bench_update(export_dir: str | Path, batch: int = 32, steps: int = 30, warmup: int = 5,
                 modes: list[str] | None = None, threads: int | None = None, data_path: str | None = None,
                 echo=print) -> dict:
    from lightcl.engine.errors import InputError
    from lightcl.engine.runtime_info import collect

    modes = modes or list(DEFAULT_MODES)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise InputError(f"unknown mode(s) {bad}; known: {', '.join(MODES)}")
    if batch < 1 or steps < 1 or warmup < 0:
        raise InputError(f"batch >= 1, steps >= 1 and warmup >= 0 are required (got {batch}, {steps}, {warmup})")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(export_dir, batch, Path(tmp) / "batch.safetensors", data_path)
        for m in modes:
            echo(f"bench update: {m} ({warmup} warm-up + {steps} steps, fresh process) ...")
            out = Path(tmp) / f"{m}.json"
            cmd = [sys.executable, "-m", "lightcl.bench.update", "--worker", m, "--export", str(export_dir),
                   "--data", str(data), "--steps", str(steps), "--warmup", str(warmup), "--out", str(out)]
            if threads:
                cmd += ["--threads", str(threads)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"bench update worker {m} failed:\n{r.stderr[-2000:]}")
            results.append(json.loads(out.read_text()))
    by = {r["mode"]: r for r in results}
    ratios = {}
    if "lightcl" in by and "finetune" in by:
        ratios["rss_lightcl_over_finetune"] = by["lightcl"]["peak_rss_delta_mib"] / max(1e-9, by["finetune"]["peak_rss_delta_mib"])
    if "lightcl" in by and "lightcl-reference" in by:
        ratios["step_lightcl_over_reference"] = by["lightcl"]["step_ms"] / by["lightcl-reference"]["step_ms"]
    env = collect()
    env["threads"] = threads
    return {"results": results, "ratios": ratios, "env": env,
            "export": str(export_dir), "batch": batch, "steps": steps, "warmup": warmup}


def format_table(res: dict) -> str:
    lines = [f"{'mode':18s} {'step ms':>9s} {'p90 ms':>8s} {'peak RSS delta MiB':>19s} {'theoretical MiB':>16s}"]
    for r in res["results"]:
        lines.append(f"{r['mode']:18s} {r['step_ms']:9.1f} {r['step_ms_p90']:8.1f} {r['peak_rss_delta_mib']:19.1f} "
                     f"{r['theoretical_mib']:16.1f}")
    for k, v in res["ratios"].items():
        lines.append(f"{k}: {v:.3f}")
    return "\n".join(lines)


def _main() -> None:
    ap = argparse.ArgumentParser(description="bench update worker (internal)")
    ap.add_argument("--worker", required=True, choices=MODES)
    ap.add_argument("--export", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    res = worker(a.worker, a.export, a.data, a.steps, a.warmup, a.threads)
    Path(a.out).write_text(json.dumps(res))


if __name__ == "__main__":
    _main()
