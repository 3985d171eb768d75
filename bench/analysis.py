"""``lightcl analyze``: the paper's layer analysis, learning plasticity (LP) and memory stability (MS)
per block of a pretrained backbone, and the split point it recommends.

The paper does not publish its formulas, so these are ours:

* the **units** are the backbone's stages (``stem``, ``layer1`` .. ``layer4``; ``--level block``:
  every residual block); a unit's *features* are the output of its last block;
* an **old task** (default: the first half of the dataset's classes) is learned first by full
  fine-tuning of the pretrained model with a fresh classifier; then a **new task** (default: the
  other half) is learned from there, every variant with the same optimiser, epochs and data order;
* **LP loss of a unit** = new-task accuracy with everything trained  -  new-task accuracy with
  that unit frozen (parameters fixed, BN statistics fixed), in accuracy points. We also report the
  *prefix* LP loss of a boundary: everything up to and including the unit frozen, which is what
  a split at that boundary costs;
* **MS of a unit** = linear CKA (Kornblith et al., ICML 2019) between the unit's features on the
  old task's test images before and after learning the new task with full fine-tuning (1 = the
  representation did not move);
* **recommended split** = the deepest boundary whose frozen units all keep MS >= ``ms_threshold``
  and whose prefix LP loss is <= ``lp_threshold`` points (defaults 0.90 and 2.0 points). None
  qualifying means: train everything.

New-task accuracy is task-incremental (argmax among the new task's classes) on its test split;
cross-entropy is taken on the task's own logit slice, as LightCL does.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightcl.engine.errors import InputError

LP_THRESHOLD = 2.0  # accuracy points a frozen prefix may cost on the new task
MS_THRESHOLD = 0.90  # linear CKA every frozen unit must keep


# --------------------------------------------------------------------------- CKA
def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two representations of the same n samples (``[n, ...]`` each), Gram form."""
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise InputError("linear_cka needs the same n >= 2 samples in both representations")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    k, l_ = x @ x.T, y @ y.T
    hsic = (k * l_).sum()
    den = torch.sqrt((k * k).sum() * (l_ * l_).sum())
    return float(hsic / den) if den > 0 else float("nan")


# --------------------------------------------------------------------------- units
def units_of(model, level: str = "stage") -> list[tuple[str, list[int]]]:
    """``[(name, [block indices])]`` in order: stages (stem, layer1, ...) or single blocks."""
    if level not in ("stage", "block"):
        raise InputError(f"level must be 'stage' or 'block', got {level!r}")
    out: list[tuple[str, list[int]]] = []
    for i, name in enumerate(model.block_names):
        key = name.split(".")[0] if level == "stage" else name
        if out and out[-1][0] == key:
            out[-1][1].append(i)
        else:
            out.append((key, [i]))
    return out


def _fresh_fc(model, n: int, gen: torch.Generator) -> None:
    from lightcl.engine.classifier import fresh_classifier

    model.fc = fresh_classifier(model.fc.in_features, n, gen)


def finetune(model, data, idx: np.ndarray, positions: Sequence[int], labels_to_pos: Tensor, pre, epochs: int,
             lr: float, momentum: float, batch_size: int, seed: int, frozen_blocks: set[int] = frozenset(),
             on_step: Callable[[], None] | None = None) -> None:
    """Train ``model`` in place on samples ``idx``: CE on the logit slice ``positions``; blocks in
    ``frozen_blocks`` keep their parameters and BN statistics."""
    for i, b in enumerate(model.blocks):
        for p in b.parameters():
            p.requires_grad_(i not in frozen_blocks)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    pos = torch.tensor(list(positions))
    local = torch.full((int(pos.max()) + 1,), -1, dtype=torch.long)
    local[pos] = torch.arange(len(pos))
    for _ in range(epochs):
        for x, y in data.batches(idx, batch_size, pre, train=True, shuffle=True, generator=gen):
            model.train()
            for i in frozen_blocks:
                model.blocks[i].eval()
            out = model(x)[:, pos]
            loss = F.cross_entropy(out, local[labels_to_pos[y]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_step:
                on_step()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


@torch.no_grad()
def task_accuracy(model, data, idx, positions, labels_to_pos, pre) -> float:
    model.eval()
    pos = torch.tensor(list(positions))
    correct = n = 0
    for x, y in data.batches(idx, 256, pre):
        pred = pos[model(x)[:, pos].argmax(1)]
        correct += int((pred == labels_to_pos[y]).sum())
        n += len(y)
    return correct / max(1, n)


@torch.no_grad()
def unit_features(model, x: Tensor, units: list[tuple[str, list[int]]]) -> dict[str, Tensor]:
    model.eval()
    last = {ids[-1]: name for name, ids in units}
    feats = {}
    h = x
    for i, b in enumerate(model.blocks):
        h = b(h)
        if i in last:
            feats[last[i]] = h.detach().clone()
    return feats


# --------------------------------------------------------------------------- the analysis
@dataclass
class _Tasks:
    """The analysis's two tasks on one dataset: images, preprocessing, the old and new classes and where each
    class sits in the fresh classifier (``lut``: class -> output; old first, then new)."""

    train: Any
    test: Any
    pre_train: Any
    pre_eval: Any
    old: list[int]
    new: list[int]
    lut: Tensor
    pos_old: list[int]
    pos_new: list[int]


def _tasks(meta: dict, dataset: str, old_classes, new_classes, data_path: str | None) -> _Tasks:
    """The dataset split into the old and new task (default: the first half of its classes, then the rest),
    normalised like the backbone (its checkpoint's normalisation, else the dataset's own statistics)."""
    from lightcl.data.datasets import load_dataset
    from lightcl.data.tasks import TensorData
    from lightcl.data.transforms import Preprocess

    norm = meta.get("normalization") or {}
    train = TensorData(load_dataset(dataset, "train", data_path))
    test = TensorData(load_dataset(dataset, "test", data_path))
    if not norm:
        mean, std = train.stats()
        norm = {"mean": mean, "std": std}
    pre_train = Preprocess(norm["mean"], norm["std"], crop_padding=4)
    pre_eval = Preprocess(norm["mean"], norm["std"])
    k = len(train.classes)
    old = [int(c) for c in old_classes] if old_classes else list(range(k // 2))
    new = [int(c) for c in new_classes] if new_classes else [c for c in range(k) if c not in old]
    if not old or not new or set(old) & set(new) or any(c < 0 or c >= k for c in old + new):
        raise InputError(f"old and new classes must be disjoint, non-empty classes of {dataset} (0..{k - 1}); "
                         f"got old {old}, new {new}")
    lut = torch.full((k,), -1, dtype=torch.long)
    for i, c in enumerate(old + new):
        lut[c] = i
    pos_old, pos_new = list(range(len(old))), list(range(len(old), len(old) + len(new)))
    return _Tasks(train, test, pre_train, pre_eval, old, new, lut, pos_old, pos_new)


def _pick(y, cls, limit, rng):
    idx = np.flatnonzero(np.isin(y, cls))
    if limit is not None and len(idx) > limit:
        idx = np.sort(rng.choice(idx, size=limit, replace=False))
    return idx


def _seed_samples(t: _Tasks, seed: int, max_train: int | None, max_eval: int) -> dict[str, np.ndarray]:
    """A seed's samples (one RNG, drawn in this order): old/new training, old/new test, the old test images
    whose features are compared (at most ``max_eval``)."""
    rng = np.random.default_rng(seed)
    ytr, yte = t.train.y.numpy(), t.test.y.numpy()
    tr_old, tr_new = _pick(ytr, t.old, max_train, rng), _pick(ytr, t.new, max_train, rng)
    te_old, te_new = _pick(yte, t.old, None, rng), _pick(yte, t.new, None, rng)
    ev_old = te_old if len(te_old) <= max_eval else np.sort(rng.choice(te_old, size=max_eval, replace=False))
    return {"tr_old": tr_old, "tr_new": tr_new, "te_old": te_old, "te_new": te_new, "ev_old": ev_old}


def _learn_seed(base, units, t: _Tasks, idx: dict[str, np.ndarray], common: dict) -> dict:
    """One seed: the old task learned by full fine-tuning; then the new task with everything trained (MS: CKA of
    each unit's features before/after), with each unit frozen, and with each prefix of units frozen (LP)."""
    seed = common["seed"]
    model_a = copy.deepcopy(base)
    _fresh_fc(model_a, len(t.old) + len(t.new), torch.Generator().manual_seed(seed))
    finetune(model_a, t.train, idx["tr_old"], t.pos_old, t.lut, t.pre_train, **common)
    acc_old_before = task_accuracy(model_a, t.test, idx["te_old"], t.pos_old, t.lut, t.pre_eval)
    x_ev = t.pre_eval(t.test.x[torch.as_tensor(idx["ev_old"])])
    before = unit_features(model_a, x_ev, units)

    def new_task(frozen: set[int]) -> tuple[float, Any]:
        m = copy.deepcopy(model_a)
        finetune(m, t.train, idx["tr_new"], t.pos_new, t.lut, t.pre_train, frozen_blocks=frozen, **common)
        return task_accuracy(m, t.test, idx["te_new"], t.pos_new, t.lut, t.pre_eval), m

    acc_full, model_b = new_task(set())
    acc_old_after = task_accuracy(model_b, t.test, idx["te_old"], t.pos_old, t.lut, t.pre_eval)
    after = unit_features(model_b, x_ev, units)
    ms = {name: linear_cka(before[name], after[name]) for name, _ in units}
    del model_b, before, after
    single, prefix = {}, {}
    for j, (name, ids) in enumerate(units):
        single[name], _ = new_task(set(ids))
        if j == 0:
            prefix[name] = single[name]
        else:
            prefix[name], _ = new_task({i for _, ii in units[: j + 1] for i in ii})
    return {"seed": seed, "acc_full": acc_full, "acc_old_before": acc_old_before,
            "acc_old_after": acc_old_after, "ms": ms, "acc_single": single, "acc_prefix": prefix}


def _mean_std(vals) -> tuple[float, float]:
    return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _unit_rows(base, units, per_seed: list[dict]) -> list[dict]:
    """Per unit, over the seeds: its parameters, LP loss frozen alone and as the end of a frozen prefix, MS."""
    ms_ = _mean_std
    rows = []
    for name, ids in units:
        n_par = sum(p.numel() for i in ids for p in base.blocks[i].parameters())
        lp_single = [100 * (r["acc_full"] - r["acc_single"][name]) for r in per_seed]
        lp_prefix = [100 * (r["acc_full"] - r["acc_prefix"][name]) for r in per_seed]
        rows.append({"unit": name, "blocks": [base.block_names[i] for i in ids], "params": int(n_par),
                     "lp_single": ms_(lp_single)[0], "lp_single_std": ms_(lp_single)[1],
                     "lp_prefix": ms_(lp_prefix)[0], "lp_prefix_std": ms_(lp_prefix)[1],
                     "acc_single": ms_([r["acc_single"][name] for r in per_seed])[0],
                     "acc_prefix": ms_([r["acc_prefix"][name] for r in per_seed])[0],
                     "ms": ms_([r["ms"][name] for r in per_seed])[0], "ms_std": ms_([r["ms"][name] for r in per_seed])[1]})
    return rows


def analyze(ckpt: str | Path, dataset: str, old_classes: Sequence[int] | None = None,
            new_classes: Sequence[int] | None = None, epochs: int = 3, lr: float = 0.01, momentum: float = 0.9,
            batch_size: int = 32, seeds: int = 1, level: str = "stage", lp_threshold: float = LP_THRESHOLD,
            ms_threshold: float = MS_THRESHOLD, max_train: int | None = None, max_eval: int = 500,
            data_path: str | None = None, threads: int | None = None, progress: bool = True,
            echo: Callable[[str], None] = print) -> dict[str, Any]:
    from tqdm import tqdm

    from lightcl.export.checkpoint import load_checkpoint

    if epochs < 1 or seeds < 1 or batch_size < 1 or max_eval < 2:
        raise InputError("epochs, seeds and batch size must be >= 1 and max_eval >= 2")
    if threads:
        torch.set_num_threads(int(threads))
    t_start = time.perf_counter()
    base, meta = load_checkpoint(ckpt)
    t = _tasks(meta, dataset, old_classes, new_classes, data_path)
    units = units_of(base, level)
    n_runs = 2 + len(units) + max(0, len(units) - 2)  # old, full new, single freezes, extra prefixes
    per_seed: list[dict] = []
    bar = None
    for seed in range(seeds):
        idx = _seed_samples(t, seed, max_train, max_eval)
        tr_old, tr_new = idx["tr_old"], idx["tr_new"]
        steps = epochs * (math.ceil(len(tr_old) / batch_size) + (n_runs - 1) * math.ceil(len(tr_new) / batch_size))
        if bar is None:
            bar = tqdm(total=steps * seeds, disable=not progress, unit="step", desc="analyze")
        tick = (lambda: bar.update(1)) if progress else None
        common = dict(epochs=epochs, lr=lr, momentum=momentum, batch_size=batch_size, seed=seed, on_step=tick)
        per_seed.append(_learn_seed(base, units, t, idx, common))
    if bar is not None:
        bar.close()
    ms_ = _mean_std
    rows = _unit_rows(base, units, per_seed)
    recommended = recommend(rows, lp_threshold, ms_threshold)
    return {
        "checkpoint": str(ckpt), "arch": meta.get("arch"), "width": meta.get("width"),
        "pretrained_on": meta.get("dataset"), "dataset": dataset, "level": level,
        "old_classes": t.old, "new_classes": t.new, "epochs": epochs, "lr": lr, "momentum": momentum,
        "batch_size": batch_size, "seeds": seeds, "max_train": max_train, "max_eval": max_eval,
        "train_sizes": {"old": int(len(tr_old)), "new": int(len(tr_new))},
        "acc_full": ms_([r["acc_full"] for r in per_seed])[0],
        "acc_old_before": ms_([r["acc_old_before"] for r in per_seed])[0],
        "acc_old_after": ms_([r["acc_old_after"] for r in per_seed])[0],
        "lp_threshold": lp_threshold, "ms_threshold": ms_threshold,
        "rows": rows, "recommended_split": recommended, "per_seed": per_seed,
        "paper_split": "layer3", "wall_s": time.perf_counter() - t_start,
    }


def recommend(rows: list[dict], lp_threshold: float, ms_threshold: float) -> str | None:
    """Mark each boundary ``frozen_ok`` and return the deepest acceptable one (never the last unit:
    freezing it too leaves only the classifier). A tolerance of 1e-6 points absorbs float noise."""
    recommended = None
    for j, row in enumerate(rows):
        ok_ms = all(r["ms"] >= ms_threshold - 1e-9 for r in rows[: j + 1])
        row["frozen_ok"] = bool(ok_ms and row["lp_prefix"] <= lp_threshold + 1e-6)
        if row["frozen_ok"] and j < len(rows) - 1:
            recommended = row["unit"]
    return recommended


# --------------------------------------------------------------------------- output
def format_table(res: dict) -> str:
    lines = [f"{'unit':10s} {'params':>10s} {'LP loss frozen alone':>21s} {'LP loss frozen prefix':>22s} "
             f"{'MS (CKA)':>9s}  frozen ok"]
    for r in res["rows"]:
        lines.append(f"{r['unit']:10s} {r['params']:10,d} {r['lp_single']:17.2f} pts {r['lp_prefix']:18.2f} pts "
                     f"{r['ms']:9.3f}  {'yes' if r['frozen_ok'] else 'no'}")
    rec = res["recommended_split"]
    lines.append(f"new-task accuracy, all trained: {100 * res['acc_full']:.2f}%; old task {100 * res['acc_old_before']:.2f}% "
                 f"-> {100 * res['acc_old_after']:.2f}% after full fine-tuning on the new task")
    lines.append(f"recommended split: {rec or 'none (train everything)'}  (thresholds: prefix LP loss <= "
                 f"{res['lp_threshold']:g} points, MS >= {res['ms_threshold']:g} for every frozen unit; "
                 f"the paper froze through {res['paper_split']})")
    return "\n".join(lines)


def report_md(res: dict, plot: str | None = None) -> str:
    rows = ["| unit | params | LP loss, unit frozen alone (pts) | LP loss, frozen through it (pts) | MS (linear CKA) | frozen ok |",
            "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        rows.append(f"| `{r['unit']}` | {r['params']:,} | {r['lp_single']:.2f} ± {r['lp_single_std']:.2f} | "
                    f"{r['lp_prefix']:.2f} ± {r['lp_prefix_std']:.2f} | {r['ms']:.3f} ± {r['ms_std']:.3f} | "
                    f"{'yes' if r['frozen_ok'] else 'no'} |")
    rec = res["recommended_split"]
    lines = [
        f"# Layer analysis: `{Path(res['checkpoint']).name}` on `{res['dataset']}`", "",
        f"{res['arch']} width {res['width']} pretrained on `{res['pretrained_on']}`. Old task: classes "
        f"{res['old_classes']}; new task: classes {res['new_classes']}; {res['epochs']} epoch(s) each, SGD lr "
        f"{res['lr']} momentum {res['momentum']}, batch {res['batch_size']}, {res['seeds']} seed(s).", "",
        *rows, "",
        f"New-task accuracy with everything trained: {100 * res['acc_full']:.2f}%. Old-task accuracy "
        f"{100 * res['acc_old_before']:.2f}% before and {100 * res['acc_old_after']:.2f}% after full fine-tuning on the "
        "new task.", "",
        f"**Recommended split: {rec or 'none (train everything)'}** — the deepest boundary whose prefix LP loss is <= "
        f"{res['lp_threshold']:g} points and whose frozen units all keep MS >= {res['ms_threshold']:g}. "
        f"The paper freezes through `{res['paper_split']}`.", "",
        "LP loss = new-task accuracy with all trained minus with the unit (or every unit up to it) frozen. "
        "MS = linear CKA of the unit's old-task features before vs after full fine-tuning on the new task.", "",
    ]
    if plot:
        lines += [f"![layer analysis]({plot})", ""]
    return "\n".join(lines)


def plot(res: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = [r["unit"] for r in res["rows"]]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x - 0.2, [r["lp_single"] for r in res["rows"]], 0.4, yerr=[r["lp_single_std"] for r in res["rows"]],
           label="LP loss, unit frozen alone", color="tab:orange")
    ax.bar(x + 0.2, [r["lp_prefix"] for r in res["rows"]], 0.4, yerr=[r["lp_prefix_std"] for r in res["rows"]],
           label="LP loss, frozen through unit", color="tab:red")
    ax.axhline(res["lp_threshold"], color="tab:red", ls=":", lw=1)
    ax.set_ylabel("new-task accuracy lost (points)")
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax2 = ax.twinx()
    ax2.plot(x, [r["ms"] for r in res["rows"]], "o-", color="tab:blue", label="MS (linear CKA)")
    ax2.axhline(res["ms_threshold"], color="tab:blue", ls=":", lw=1)
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("memory stability (CKA)")
    if res["recommended_split"] in names:
        ax.axvline(names.index(res["recommended_split"]) + 0.5, color="k", ls="--", lw=1)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center left")
    ax.set_title(f"LP / MS per {res['level']} ({res['dataset']}); recommended split: {res['recommended_split']}",
                 fontsize=9)
    fig.tight_layout()
    from lightcl.bench.plots import save_figure

    save_figure(fig, path, dpi=90)
    return Path(path)


def write_outputs(res: dict, out: str | Path) -> dict[str, Path]:
    from lightcl.engine.fileio import write_bytes_atomic, write_json_atomic

    from lightcl.engine.outpath import ensure_dir

    out = ensure_dir(out, "--out")
    paths = {"json": out / "analysis.json", "md": out / "analysis.md", "png": out / "analysis.png"}
    write_json_atomic(paths["json"], res, root=out)
    plot(res, paths["png"])
    write_bytes_atomic(paths["md"], report_md(res, paths["png"].name).encode(), root=out)
    return paths
