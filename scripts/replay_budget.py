#!/usr/bin/env python
"""CIL against measured peak memory for replay budgets, beside the peers of one suite run.

    python scripts/replay_budget.py --main DIR --budget 0.25MiB=DIR --budget 1MiB=DIR ... --out PNG [--md MD]

``--main``: a suite output (results.json) whose methods are drawn as reference points; each ``--budget``:
a suite output that ran ``lightcl-replay`` with that ``replay_budget`` (``--method-config``). Prints a
markdown table (mean +- std over seeds) and writes the plot. Every number is read from the results.json files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _records(d: str) -> list[dict]:
    """The suite's results.json, or (a suite still running or stopped) the finished runs in DIR/records/."""
    res = Path(d) / "results.json"
    if res.is_file():
        recs = json.loads(res.read_text())["records"]
    else:
        recs = [json.loads(p.read_text()) for p in sorted((Path(d) / "records").glob("*.json"))]
    return [r for r in recs if r.get("status") == "ok"]


def _stats(recs: list[dict], key: str) -> tuple[float, float]:
    v = np.array([r[key] for r in recs if r.get(key) is not None], dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0  # sample std, as the suite's report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--main", required=True, help="suite output with the peers")
    ap.add_argument("--budget", action="append", default=[], help="LABEL=DIR: a lightcl-replay run at that budget")
    ap.add_argument("--method", default="lightcl-replay", help="the method of the --budget runs")
    ap.add_argument("--out", required=True, help="PNG to write")
    args = ap.parse_args()
    rows = []
    for spec in args.budget:
        label, _, d = spec.partition("=")
        recs = [r for r in _records(d) if r["method"] == args.method]
        rep = [r["describe"].get("replay", {}) for r in recs]
        rows.append((f"{args.method} {label}", recs, rep[0] if rep else {}))
    main_recs = _records(args.main)
    peers = []
    for m in dict.fromkeys(r["method"] for r in main_recs):
        recs = [r for r in main_recs if r["method"] == m and r.get("cil_applicable", True)]
        if recs:
            peers.append((m, recs, recs[0]["describe"].get("replay", {})))
    print("| run | seeds | CIL % | TIL % | measured peak ΔRSS MiB | CIL per measured MiB | replay bytes/sample | replay samples |")
    print("|---|---|---|---|---|---|---|---|")
    pts = []
    for name, recs, rep in rows + peers:
        cil, cs = _stats(recs, "final_cil")
        til, ts = _stats(recs, "final_til")
        mem, ms = _stats(recs, "peak_rss_delta_mib")
        pts.append((name, cil * 100, cs * 100, mem, ms, name.startswith(args.method + " ")))
        print(f"| `{name}` | {len(recs)} | {100 * cil:.2f} ± {100 * cs:.2f} | {100 * til:.2f} ± {100 * ts:.2f} | "
              f"{mem:.1f} ± {ms:.1f} | {100 * cil / mem:.2f} | {rep.get('bytes_per_sample', '')} | {rep.get('samples', '')} |")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sweep = [p for p in pts if p[5]]
    if sweep:
        ax.errorbar([p[3] for p in sweep], [p[1] for p in sweep], xerr=[p[4] for p in sweep],
                    yerr=[p[2] for p in sweep], fmt="o-", color="C3", label=f"{args.method} (budget sweep)")
    for name, cil, cs, mem, ms, is_sweep in pts:
        if not is_sweep:
            ax.errorbar([mem], [cil], xerr=[ms], yerr=[cs], fmt="s", color="0.5", ms=4)
        ax.annotate(name.replace(args.method + " ", "") if is_sweep else name, (mem, cil), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("measured peak ΔRSS while training (MiB, log)")
    ax.set_ylabel("final class-incremental accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
