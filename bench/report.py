"""Suite results -> ``results.json``, ``results.csv``, ``report.md`` (+ plots via :mod:`.plots`).

The main table has the paper's Table 1 shape (method, CIL, TIL, memory), mean +- std over seeds,
with our extra resource columns; for paper suites the paper's own figures stand beside ours.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from lightcl.engine.fileio import write_bytes_atomic, write_json_atomic

from .aggregate import aggregate, ok_records
from .plots import make_plots

# The paper's Table 1 (arXiv 2407.10545; also the authors' README image, github INV-WZQ/LightCL
# image/Experiment.png): pretrained ResNet-18, buffer 15, mean over 5 runs; FLOPs and Mem theoretical.
# (paper's row name, our method or None, CIL (None = "/": PNN cannot run CIL), TIL, FLOPs, Mem MB)
PAPER_TABLE1 = {
    "paper-cifar10": {
        "dataset": "Split CIFAR-10", "flops_unit": 1e15,
        "rows": [
            ("JOINT", "joint", 94.67, 99.04, 37.5, 153.4),
            ("SGD", "sgd", 34.21, 86.19, 7.5, 153.4),
            ("EWC", "ewc", 40.42, 89.77, 7.5, 196.0),
            ("PNN", "pnn", None, 94.62, 10.5, 323.9),
            ("FDR", "fdr", 25.64, 85.54, 11.0, 185.4),
            ("ER", "er", 54.44, 92.25, 11.0, 185.4),
            ("DER++", "derpp", 40.75, 85.68, 14.5, 217.3),
            ("SparCL-ER (sparsity 0.9)", "sparcl-er", 36.98, 85.33, 1.1, 106.6),
            ("SparCL-DER++ (sparsity 0.9)", "sparcl-derpp", 35.58, 85.28, 1.5, 140.6),
            ("LightCL", "lightcl", 55.53, 96.28, 5.4, 92.8),
            ("LightCL (sparsity 0.9)", "lightcl-sparse", 38.31, 86.88, 2.3, 25.0),
        ],
    },
    "paper-tinyimg": {
        "dataset": "Split TinyImageNet", "flops_unit": 1e16,
        "rows": [
            ("JOINT", "joint", 61.38, 83.14, 120.0, 357.9),
            ("SGD", "sgd", 10.63, 34.24, 12.0, 357.9),
            ("EWC", "ewc", 11.17, 34.70, 12.0, 400.5),
            ("PNN", "pnn", None, 73.94, 26.4, 528.4),
            ("FDR", "fdr", 10.80, 34.42, 17.7, 485.7),
            ("ER", "er", 11.82, 36.76, 17.7, 485.7),
            ("DER++", "derpp", 7.98, 35.88, 23.3, 613.5),
            ("SparCL-ER (sparsity 0.9)", "sparcl-er", 10.01, 33.01, 1.8, 407.0),
            ("SparCL-DER++ (sparsity 0.9)", "sparcl-derpp", 9.12, 31.86, 2.3, 536.8),
            ("LightCL", "lightcl", 12.79, 37.39, 8.6, 128.0),
            ("LightCL (sparsity 0.9)", "lightcl-sparse", 8.95, 33.94, 3.7, 87.1),
        ],
    },
}


def _paper_suite(results: dict) -> str:
    s = results.get("suite")
    return s if s in PAPER_TABLE1 else "paper-cifar10"


def paper_rows(suite: str) -> dict[str, tuple]:
    """method -> (paper's name, CIL, TIL, FLOPs in FLOPs, Mem MB) for a paper suite ({} otherwise)."""
    t = PAPER_TABLE1.get(suite)
    if not t:
        return {}
    out = {m: (name, cil, til, fl * t["flops_unit"], mem) for name, m, cil, til, fl, mem in t["rows"] if m}
    out["lightcl-reference"] = out["lightcl"]
    return out


# kept for callers of the old name: the CIFAR-10 rows
PAPER_BY_METHOD = paper_rows("paper-cifar10")

CSV_FIELDS = ["method", "seed", "status", "cil_applicable", "final_cil", "final_til", "forgetting_cil", "forgetting_til", "bwt_cil",
              "bwt_til", "theoretical_mib", "peak_rss_delta_mib", "peak_rss_total_delta_mib", "idle_rss_mib",
              "cuda_max_allocated_mib", "train_flops", "step_ms", "step_ms_p90", "steps", "train_s", "wall_s",
              "epochs", "batch_size", "buffer_size", "threads"]
def _pm(ms: tuple[float, float], scale: float = 1.0, digits: int = 1, na: str = "-") -> str:
    m, s = ms
    if m is None or math.isnan(m):
        return na
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def _flops(ms: tuple[float, float]) -> str:
    m, s = ms
    if math.isnan(m):
        return "-"
    return f"{m / 1e12:.3g} ± {s / 1e12:.2g}"


def _cil(a: dict, key: str, digits: int = 2) -> str:
    """CIL cell: "n/a" for a task-incremental-only method (PNN), never a number."""
    return "n/a" if not a.get("cil_applicable", True) else _pm(a[key], 100, digits)


def main_table(results: dict) -> str:
    agg = aggregate(results)
    paper = paper_rows(_paper_suite(results)) if results.get("paper_suite") else {}
    head = ["method", "trains", "seeds", "CIL %", "TIL %", "theoretical MiB", "measured peak ΔRSS MiB",
            "train TFLOPs", "update step ms", "wall s"]
    if paper:
        head += ["paper CIL", "paper TIL", "paper TFLOPs", "paper Mem (MB)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, a in agg.items():
        row = [f"`{m}`", a["trains"], str(a["n"]), _cil(a, "final_cil"), _pm(a["final_til"], 100, 2),
               _pm(a["theoretical_mib"]), _pm(a["peak_rss_delta_mib"]), _flops(a["train_flops"]),
               _pm(a["step_ms"]), _pm(a["wall_s"], 1, 0)]
        if paper:
            p = paper.get(m)
            row += ([("n/a" if p[1] is None else f"{p[1]:.2f}"), f"{p[2]:.2f}", f"{p[3] / 1e12:,.0f}", f"{p[4]:.1f}"]
                    if p else ["-", "-", "-", "-"])
        rows.append("| " + " | ".join(row) + " |")
    # methods the suite found not applicable to this backbone: a row that says so (the reason is listed
    # under "Skipped and failed runs"), never a blank or a number
    for sk in results.get("skipped", []):
        if sk.get("status") == "not applicable" and sk["method"] not in agg:
            rows.append("| " + " | ".join([f"`{sk['method']}`", "not applicable (see below)", "0"]
                                          + ["n/a"] * (len(head) - 3)) + " |")
    return "\n".join(rows)


def forgetting_table(results: dict) -> str:
    agg = aggregate(results)
    rows = ["| method | forgetting CIL (pts) | forgetting TIL (pts) | BWT CIL (pts) | BWT TIL (pts) | peak ΔRSS incl. evaluation MiB |",
            "|---|---|---|---|---|---|"]
    for m, a in agg.items():
        rows.append(f"| `{m}` | {_cil(a, 'forgetting_cil', 1)} | {_pm(a['forgetting_til'], 100)} | "
                    f"{_cil(a, 'bwt_cil', 1)} | {_pm(a['bwt_til'], 100)} | {_pm(a['peak_rss_total_delta_mib'])} |")
    return "\n".join(rows)


def paper_table(suite: str = "paper-cifar10") -> str:
    t = PAPER_TABLE1[suite]
    rows = [f"| method (paper, {t['dataset']}) | CIL | TIL | FLOPs (x{t['flops_unit']:.0e}) | Mem (MB, theoretical) |",
            "|---|---|---|---|---|"]
    for name, _m, cil, til, fl, mem in t["rows"]:
        rows.append(f"| {name} | {'n/a' if cil is None else f'{cil:.2f}'} | {til:.2f} | {fl:g} | {mem:.1f} |")
    return "\n".join(rows)


def matrix_block(R: list[list[float]], title: str) -> str:
    lines = [f"{title:>10s} " + " ".join(f"{'T' + str(i):>6s}" for i in range(len(R[-1]) if R else 0))]
    for t, r in enumerate(R):
        lines.append(f"{'after T' + str(t):>10s} " + " ".join(f"{100 * a:6.1f}" for a in r))
    return "\n".join(lines)


def _theory_row(r: dict) -> str:
    a = r["theoretical"]
    return (f"| `{r['method']}` | {a['weights']:,} | {a['trainable']:,} | {a['optimizer_slots']} | {a['extra_state']:,} | "
            f"{a['activations']:,} ({a['samples_per_step']} samples) | {a['buffer']:,} | {r['theoretical_mib']:.1f} |")


# what the report says about its own method: the same text in every report
HOW_MEASURED = [
    "- **Accuracy**: one evaluation pass per task boundary on the test split of every task seen so far; TIL = "
    "argmax inside the task's own outputs, CIL = argmax over every class seen; both from the same logits. "
    "Final = mean over tasks after the last one; forgetting = mean over old tasks of (best earlier accuracy - "
    "final); BWT = mean of (final - just-learned accuracy).",
    "- **Measured peak ΔRSS**: each method-seed runs alone in a fresh process; peak resident memory while "
    "training (Linux VmHWM, reset after the method is built and after each evaluation, each time after "
    "`malloc_trim`) minus the idle process (interpreter + torch + onnxruntime + the uint8 dataset, after one "
    "tiny throw-away training step in torch and one conv in onnxruntime, so library code paged in by a first "
    "step counts for nobody). Evaluation runs in batches of 32 so no allocator arena outgrows training. The "
    "table's column excludes evaluation passes; the forgetting table's last column is the whole run's peak.",
    "- **Theoretical memory**: the paper's accounting in fp32: weights held + gradients of trainable weights + "
    "optimiser state + extra state (EWC: Fisher + anchor; LwF: the teacher) + activations of one step "
    "(outputs of every leaf module for batch 32 plus the replayed samples, through the trained part only) + "
    "the buffer.",
    "- **Task-incremental-only methods** (`pnn`): a column per task, picked by the task id; CIL has no meaning "
    "and is reported as n/a, never as a number. PNN's theoretical memory is taken after the last task (every "
    "column held, gradients of the newest column and its laterals): it grows with the tasks.",
    "- **Sparse methods** (`sparcl-*`): weights held and gradients count the mask's kept entries (+ the dense "
    "stem, shortcuts, BN and classifier), as the paper counts SparCL (its 140.6 MB for SparCL-DER++ against "
    "217.3 for DER++ is weights and gradients at 10%); activations are dense; FLOPs count each pruned conv at "
    "its mask density, and samples removed by dynamic data removal cost nothing. Measured memory is dense "
    "PyTorch tensors (the masks zero weights, they do not shrink storage).",
    "- **Training FLOPs**: conv + linear only (2 per multiply-add), per sample: 1x forward FLOPs for a part that "
    "is only run forward (the frozen extractor, LwF's teacher, buffer targets), 3x for a part that is trained "
    "(forward + backward); summed over every step and end-of-task pass (EWC's Fisher, LightCL's vital channels). "
    "Evaluation is not counted.",
    "- **Update step**: median wall time of one `observe` call (batch 32 + whatever the method replays). "
    "**Wall**: build + train + evaluate, per run.",
]


def _concurrency(results: dict) -> str:
    """How runs shared the machine: it decides whether step and wall times of one report compare with another's."""
    ex = results.get("executor") or {}
    if ex.get("name") == "ray":
        return "runs in parallel as Ray tasks (up to one per CPU)"
    return "one run at a time"


def _resumed(results: dict) -> str:
    """A restarted suite skips finished runs: its wall time then covers only this pass."""
    n = int((results.get("executor") or {}).get("resumed") or 0)
    return f" (this pass only: {n} run(s) were finished by an earlier pass and kept)" if n else ""


def _setting(results: dict) -> list[str]:
    """The title, how to regenerate, and the setting: scenario, pretrained start, seeds, machine, wall time."""
    s = results["scenario"]
    b = results.get("backbone", {})
    env = results.get("env", {})
    n_ok = len(ok_records(results))
    lines = [f"# Benchmark suite `{results['suite']}`", ""]
    if results.get("command"):
        lines += ["Regenerate with:", "", "```", results["command"], "```", ""]
    lines += [
        f"- scenario: {s.get('description', '')} {s['n_tasks']} tasks x {s['classes_per_task']} classes of "
        f"`{s['cl_dataset']}`, batch {s['batch_size']}, **{results['epochs']} epoch(s) per task**, "
        f"random-crop augmentation {'on' if s.get('augment') else 'off'}, class order "
        f"{'natural' if s.get('class_order_seed') is None else 'seeded ' + str(s.get('class_order_seed'))}",
        f"- pretrained start (every method): {s.get('arch') or 'resnet18'} width {b.get('width')} pretrained on `{b.get('dataset')}` for "
        f"{b.get('epochs')} epochs (test accuracy {100 * (b.get('test_accuracy') or 0):.1f}%), `{Path(b.get('path', '')).name}`; "
        f"LightCL / latent replay use its export split at `{s.get('split')}` (extractor backend `{results.get('backend')}`)",
        f"- seeds: {results['seeds']} (seed = data order + every method's own randomness); runs finished: {n_ok}"
        + (f"; buffer override: {results['buffer']}" if results.get("buffer") is not None else ""),
        f"- machine: {env.get('platform', '?')}, {env.get('cpu_count', '?')} CPU(s), torch {env.get('torch')}, "
        f"onnxruntime {env.get('onnxruntime')}; {results.get('threads') or 'default'} thread(s) per run, "
        f"{_concurrency(results)}",
        f"- suite wall time: {results.get('wall_s', 0) / 60:.1f} min{_resumed(results)}"
        + ("" if results.get("finished") else " (**partial: the suite had not finished when this was written**)"),
        "",
    ]
    return lines


def _accuracy_sections(results: dict) -> list[str]:
    """The main table (with the paper's note on a paper suite), forgetting, and the mean accuracy matrices."""
    lines = [
        "## Results (Table 1 shape; mean ± std over seeds)",
        "",
        main_table(results),
        "",
    ]
    if results.get("paper_suite"):
        lines += ["The paper's columns are its Table 1 (" + PAPER_TABLE1[_paper_suite(results)]["dataset"] + ", width-64 "
                  "ResNet-18 pretrained on ImageNet32, buffer 15, mean of 5 runs; FLOPs and MB = MiB of its theoretical "
                  "accounting). `lightcl-reference` is set beside the paper's LightCL row. PNN's CIL is n/a in the paper "
                  "too (\"PNN cannot run under CIL settings\").", ""]
    lines += ["## Forgetting and backward transfer (accuracy points; mean ± std)", "", forgetting_table(results), ""]
    agg = aggregate(results)
    if agg:
        lines += ["## Accuracy matrices (mean over seeds; row = after learning task t, column = task i)", ""]
        for m, a in agg.items():
            cil = matrix_block(a["cil"], "CIL %") if a["cil"] is not None else "     CIL %  n/a (task-incremental only)"
            lines += [f"`{m}`", "", "```", cil, matrix_block(a["til"], "TIL %"), "```", ""]
    return lines


def _method_tables(results: dict) -> list[str]:
    """Per method (seed 0's run): the theoretical memory itemised, and the hyperparameters with their source."""
    ok = ok_records(results)
    if not ok:
        return []
    first = {}
    for r in ok:
        first.setdefault(r["method"], r)
    lines = ["## Theoretical memory, itemised (elements, fp32; seed 0's run)", "",
             "| method | weights held | trainable (= gradients) | optimiser slots | extra state | activations of one step | buffer | MiB |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [_theory_row(r) for r in first.values()]
    lines += [""]
    lines += ["## Hyperparameters (from `bench/configs/*.json`)", "", "| method | hyperparameters | source |",
              "|---|---|---|"]
    for m, r in first.items():
        hp = ", ".join(f"{k}={v}" for k, v in r.get("hyperparameters", {}).items())
        lines.append(f"| `{m}` | {hp} | {r.get('config', {}).get('source', '')} |")
    lines += [""]
    return lines


def _skipped_and_failed(results: dict) -> list[str]:
    bad = [r for r in results.get("records", []) if r.get("status") != "ok"]
    if not (bad or results.get("skipped")):
        return []
    lines = ["## Skipped and failed runs", ""]
    for sk in results.get("skipped", []):
        lines.append(f"- `{sk['method']}`: {sk['reason']}")
    for r in bad:
        err = (r.get("error") or "").strip().splitlines()
        lines.append(f"- `{r['method']}` seed {r['seed']}: failed (exit {r.get('returncode')}): "
                     f"{err[-1] if err else ''} (log: {r.get('log')})")
    lines += [""]
    return lines


def report_md(results: dict, plots: list[str] | None = None) -> str:
    lines = _setting(results) + _accuracy_sections(results) + _method_tables(results) + _skipped_and_failed(results)
    lines += ["## How it is measured", "", *HOW_MEASURED, ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if not results.get("paper_suite"):
        lines += ["## The paper's Table 1, for orientation (Split CIFAR-10, width 64, not this setting)", "",
                  paper_table("paper-cifar10"), ""]
    return "\n".join(lines)


def to_csv(results: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in results.get("records", []):
        w.writerow({k: r.get(k) for k in CSV_FIELDS})
    return buf.getvalue()


PLOT_NAMES = ("heatmaps.png", "accuracy_vs_memory.png", "curves.png", "task_curves.png")  # bench.plots.make_plots


def write_all(results: dict, out: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write results.json, results.csv, report.md (+ PNG plots). Returns the paths written."""
    from lightcl.engine.outpath import check_output_file, ensure_dir

    out = ensure_dir(out, "--out")
    paths = {"json": out / "results.json", "csv": out / "results.csv", "report": out / "report.md"}
    write_json_atomic(paths["json"], json.loads(json.dumps(results, default=str)), root=out)
    write_bytes_atomic(paths["csv"], to_csv(results).encode(), root=out)
    names: list[str] = []
    if plots and ok_records(results):
        for name in PLOT_NAMES:  # before matplotlib renders anything
            check_output_file(out / name, "plot", root=out)
        for p in make_plots(results, out):
            paths[p.stem] = p
            names.append(p.name)
    write_bytes_atomic(paths["report"], report_md(results, names).encode(), root=out)
    return paths
