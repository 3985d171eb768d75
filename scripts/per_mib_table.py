#!/usr/bin/env python
"""The README's lead table: accuracy per measured MiB for every method of ONE suite run.

    python scripts/per_mib_table.py OUT            # OUT: a `lightcl bench suite` output (results.json)

CIL per MiB = mean final CIL % / mean measured peak ΔRSS MiB while training (the suite's ``peak_rss_delta_mib``).
Rows sorted by it, best first; TIL-only methods last. Every number is read from OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _stats(recs: list[dict], key: str) -> tuple[float, float]:
    v = np.array([r[key] for r in recs if r.get(key) is not None], dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0  # sample std, as the suite's report


def rows(results: dict) -> list[tuple]:
    recs = [r for r in results["records"] if r.get("status") == "ok"]
    out = []
    for m in dict.fromkeys(r["method"] for r in recs):
        mine = [r for r in recs if r["method"] == m]
        cil_ok = all(r.get("cil_applicable", True) for r in mine)
        cil, cs = _stats(mine, "final_cil") if cil_ok else (float("nan"), float("nan"))
        til, ts = _stats(mine, "final_til")
        peak, ps = _stats(mine, "peak_rss_delta_mib")
        out.append((m, len(mine), 100 * cil / peak if cil_ok else None, cil, cs, til, ts, peak, ps))
    return sorted(out, key=lambda r: (r[2] is None, -(r[2] or 0.0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a suite output directory (results.json)")
    args = ap.parse_args()
    results = json.loads((args.out / "results.json").read_text())
    print("| method | CIL % per measured MiB | CIL % | TIL % | measured peak ΔRSS MiB | seeds |")
    print("|---|---|---|---|---|---|")
    for m, n, per, cil, cs, til, ts, peak, ps in rows(results):
        name = f"`{m}`" + ("" if per is not None else " (TIL only)")
        cil_txt = "n/a" if per is None else f"{100 * cil:.2f} ± {100 * cs:.2f}"
        per_txt = "n/a" if per is None else f"{per:.2f}"
        print(f"| {name} | {per_txt} | {cil_txt} | {100 * til:.2f} ± {100 * ts:.2f} | {peak:.1f} ± {ps:.1f} | {n} |")


if __name__ == "__main__":
    main()
