"""``lightcl bench update``'s parent process: the request checked, two real batches prepared, one fresh worker
process per mode (:mod:`.measure`), and the ratios between modes."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .modes import DEFAULT_MODES, MODE_ENV, OVERLAP_MODES, check_request

# what the worker processes run (a "module:function" string: the harness imports it in the child)
RUN_MODE = "lightcl.bench.update.measure:run_mode"


def prepare_data(export_dir: str | Path, batch: int, out: Path, data_path: str | None = None) -> Path:
    """Two real batches of the export's dataset (task A: classes 0,1; task B: classes 2,3), normalised."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from lightcl.data.datasets import load_dataset
    from lightcl.data.tasks import TensorData
    from lightcl.data.transforms import Preprocess
    from lightcl.engine.export_dir import load_export_meta

    meta = load_export_meta(export_dir, verify=False)
    # the export's input shape and resize rule (a zoo export: 3 x 32 x 32, stretch, as before)
    td = TensorData(load_dataset(meta["dataset"], "train", data_path), meta["input_shape"], meta.get("resize"))
    pre = Preprocess.from_meta(meta)
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
                 echo=print, sparse_export: str | Path | None = None) -> dict:
    """Every mode in ``modes`` measured in its own fresh process on the same two batches; the ratios between
    them, the machine, and the backend ``lightcl learn --backend auto`` would learn with here."""
    from lightcl.engine.runtime_info import collect

    modes = modes or list(DEFAULT_MODES)
    sparse_export = check_request(export_dir, modes, batch, steps, warmup, threads, sparse_export)
    from lightcl.bench.worker import run_worker

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(export_dir, batch, Path(tmp) / "batch.safetensors", data_path)
        for m in modes:
            echo(f"bench update: {m} ({warmup} warm-up + {steps} steps, fresh process) ...")
            spec = {"mode": m, "export_dir": str(export_dir), "data_file": str(data), "steps": steps,
                    "warmup": warmup, "threads": threads, "sparse_export": sparse_export}
            run = run_worker(RUN_MODE, spec, env=MODE_ENV.get(m, {}))
            results.append(run.raise_for_error(f"bench update worker {m}"))
    env = collect()
    env["threads"] = threads
    return {"results": results, "ratios": ratios(results), "env": env, "sparse_export": sparse_export,
            "export": str(export_dir), "batch": batch, "steps": steps, "warmup": warmup,
            "learning_default": learning_default(export_dir)}


def ratios(results: list[dict]) -> dict[str, float]:
    """Peak RSS over fine-tuning's (plain and lean) and step time over the authors' procedure's, per mode run."""
    by = {r["mode"]: r for r in results}
    out = {}
    if "lightcl" in by and "finetune" in by:
        out["rss_lightcl_over_finetune"] = by["lightcl"]["peak_rss_delta_mib"] / max(1e-9, by["finetune"]["peak_rss_delta_mib"])
    if "lightcl" in by and "lightcl-reference" in by:
        out["step_lightcl_over_reference"] = by["lightcl"]["step_ms"] / by["lightcl-reference"]["step_ms"]
    ft = by.get("finetune", {}).get("peak_rss_delta_mib")
    for m in ("lightcl-sparse", "lightcl-sparse-int8", "lightcl-int8", "lightcl-plain", "lightcl-noarena",
              "lightcl-lean", "lightcl-lean-plain", "lightcl-sparse-lean", "lightcl-system", "lightcl-sparse-system",
              "lightcl-int8-system", "lightcl-whole", "lightcl-int8-whole", "lightcl-int8-lean", *OVERLAP_MODES):
        if m in by and ft:
            out[f"rss_{m}_over_finetune"] = by[m]["peak_rss_delta_mib"] / max(1e-9, ft)
    ftl = by.get("finetune-lean", {}).get("peak_rss_delta_mib")
    for m in ("lightcl", "lightcl-sparse", "lightcl-lean", "lightcl-sparse-lean"):
        if m in by and ftl:
            out[f"rss_{m}_over_finetune-lean"] = by[m]["peak_rss_delta_mib"] / max(1e-9, ftl)
    for m in ("lightcl-sparse", "lightcl-int8", "lightcl-sparse-int8", "lightcl-system", "lightcl-torch",
              "lightcl-whole", "lightcl-int8-whole", "lightcl-lean", "lightcl-int8-lean", *OVERLAP_MODES):
        if m in by and "lightcl-reference" in by:
            out[f"step_{m}_over_reference"] = by[m]["step_ms"] / by["lightcl-reference"]["step_ms"]
    return out


def learning_default(export_dir: str | Path) -> dict:
    """What ``lightcl learn --backend auto`` learns with on a CPU (engine/extractors: LEARNING_AUTO)."""
    from lightcl.engine.export_dir import load_export_meta
    from lightcl.engine.extractors import int8_unusable

    why_not = int8_unusable(load_export_meta(export_dir, verify=False))
    return {"backend": "ort" if why_not else "ort-int8", "why": why_not or "its int8 agreement check passed",
            "mode": "lightcl" if why_not else "lightcl-int8"}
