"""PNG plots of a suite (matplotlib, Agg backend: no display needed).

* ``heatmaps.png``: accuracy matrix R[t][i] per method (CIL and TIL), mean over seeds
* ``accuracy_vs_memory.png``: final accuracy against measured peak memory and theoretical memory
* ``curves.png``: average accuracy over the tasks seen so far, after each task, per method
* ``task_curves.png``: per method, the CIL accuracy of every task as later tasks are learned (TIL for a
  task-incremental-only method such as PNN, whose CIL is n/a)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .aggregate import aggregate

DPI = 90


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int | None = None, root=None) -> None:
    """Render ``fig`` to PNG bytes, then write them under the one output rule (``engine.outpath``: atomic, never
    through a link or onto a FIFO); matplotlib's own ``savefig(path)`` follows whatever is at ``path``."""
    import io

    from lightcl.engine.fileio import write_bytes_atomic

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI if dpi is None else dpi)
    finally:
        _plt().close(fig)
    write_bytes_atomic(path, buf.getvalue(), root=root)


def _mat(R: list[list[float]]) -> np.ndarray:
    T = len(R)
    n = max(len(r) for r in R)
    a = np.full((T, n), np.nan)
    for t, r in enumerate(R):
        a[t, : len(r)] = 100.0 * np.asarray(r)
    return a


def heatmaps(agg: dict, path: Path, title: str) -> Path:
    plt = _plt()
    methods = list(agg)
    fig, axes = plt.subplots(len(methods), 2, figsize=(6.4, 2.3 * len(methods) + 0.6), squeeze=False)
    for row, m in enumerate(methods):
        for col, key in enumerate(("cil", "til")):
            ax = axes[row][col]
            if agg[m][key] is None:  # task-incremental-only method: no CIL
                ax.text(0.5, 0.5, f"{key.upper()}: n/a (task-incremental only)", ha="center", va="center",
                        fontsize=8, transform=ax.transAxes)
                ax.set_title(f"{m} - {key.upper()}", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            a = _mat(agg[m][key])
            ax.imshow(a, vmin=0, vmax=100, cmap="viridis", aspect="auto")
            T, n = a.shape
            if T * n <= 120:
                for t in range(T):
                    for i in range(n):
                        if not math.isnan(a[t, i]):
                            ax.text(i, t, f"{a[t, i]:.0f}", ha="center", va="center", fontsize=7,
                                    color="white" if a[t, i] < 60 else "black")
            ax.set_title(f"{m} - {key.upper()}", fontsize=9)
            ax.set_xticks(range(n))
            ax.set_yticks(range(T))
            ax.tick_params(labelsize=7)
            if row == len(methods) - 1:
                ax.set_xlabel("evaluated task", fontsize=8)
            if col == 0:
                ax.set_ylabel("after task", fontsize=8)
    h = fig.get_size_inches()[1]
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / h))
    save_figure(fig, path)
    return path


def accuracy_vs_memory(agg: dict, path: Path, title: str) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, label in ((axes[0], "peak_rss_delta_mib", "measured peak ΔRSS while training (MiB)"),
                           (axes[1], "theoretical_mib", "theoretical memory, paper's accounting (MiB)")):
        for m, a in agg.items():
            x, xs = a[key]
            for acc, marker, col in (("final_cil", "o", "tab:blue"), ("final_til", "^", "tab:orange")):
                y, ys = a[acc]
                if y is None or math.isnan(y):  # CIL n/a (task-incremental only)
                    continue
                ax.errorbar(x, 100 * y, xerr=xs, yerr=100 * ys, fmt=marker, color=col, ms=6, capsize=2)
            y0 = a["final_cil"][0] if a.get("cil_applicable", True) else a["final_til"][0]
            ax.annotate(m if a.get("cil_applicable", True) else f"{m} (TIL only)", (x, 100 * y0), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylabel("final accuracy (%)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].plot([], [], "o", color="tab:blue", label="CIL")
    axes[0].plot([], [], "^", color="tab:orange", label="TIL")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, path)
    return path


def curves(agg: dict, path: Path, title: str) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in ((axes[0], "cil"), (axes[1], "til")):
        for m, a in agg.items():
            R = a[key]
            if R is None:  # CIL n/a
                continue
            ax.plot(range(1, len(R) + 1), [100 * float(np.mean(r)) for r in R], marker="o", ms=3, label=m)
        ax.set_xticks(range(1, max((len(a[key]) for a in agg.values() if a[key] is not None), default=1) + 1))
        ax.set_xlabel("tasks learned", fontsize=9)
        ax.set_ylabel(f"average {key.upper()} accuracy on tasks seen (%)", fontsize=9)
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, path)
    return path


def task_curves(agg: dict, path: Path, title: str) -> Path:
    plt = _plt()
    methods = list(agg)
    cols = min(3, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for k, m in enumerate(methods):
        ax = axes[k // cols][k % cols]
        key = "cil" if agg[m]["cil"] is not None else "til"  # task-incremental-only: its TIL
        a = _mat(agg[m][key])
        T, n = a.shape
        for i in range(n):
            ts = [t for t in range(T) if not math.isnan(a[t, i])]
            ax.plot([t + 1 for t in ts], [a[t, i] for t in ts], marker="o", ms=2.5, label=f"task {i}")
        ax.set_title(m if key == "cil" else f"{m} (TIL; CIL n/a)", fontsize=9)
        ax.set_xticks(range(1, T + 1))
        ax.set_ylim(0, 101)
        ax.set_xlabel("tasks learned", fontsize=8)
        ax.set_ylabel(f"{key.upper()} accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for k in range(len(methods), rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, path)
    return path


def make_plots(results: dict, out: str | Path) -> list[Path]:
    out = Path(out)
    agg = aggregate(results)
    if not agg:
        return []
    seeds = max(a["n"] for a in agg.values())
    tag = f"suite {results['suite']} (mean over {seeds} seed{'s' if seeds > 1 else ''})"
    return [heatmaps(agg, out / "heatmaps.png", f"accuracy matrices, {tag}"),
            accuracy_vs_memory(agg, out / "accuracy_vs_memory.png", f"accuracy vs memory, {tag}"),
            curves(agg, out / "curves.png", f"average accuracy after each task, {tag}"),
            task_curves(agg, out / "task_curves.png", f"per-task CIL accuracy, {tag}")]
