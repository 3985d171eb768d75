"""Suite results -> per-method means over seeds: what the report's tables and the plots both show.

Its own module, below :mod:`.report` and :mod:`.plots`: the report draws the plots, and both need these
figures, so neither imports the other for them.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

# the per-record metrics averaged over seeds
METRICS = ["final_cil", "final_til", "forgetting_cil", "forgetting_til", "bwt_cil", "bwt_til", "theoretical_mib",
           "peak_rss_delta_mib", "peak_rss_total_delta_mib", "train_flops", "step_ms", "wall_s", "train_s"]


def ok_records(results: dict) -> list[dict]:
    """The records of runs that finished (status ok)."""
    return [r for r in results.get("records", []) if r.get("status") == "ok"]


def method_order(results: dict) -> list[str]:
    """Methods in the order the suite named them, then any others the records hold."""
    seen = []
    for m in results.get("methods", []):
        if m not in seen:
            seen.append(m)
    for r in results.get("records", []):
        if r["method"] not in seen:
            seen.append(r["method"])
    return seen


def mean_std(vals: list[float]) -> tuple[float, float]:
    """Mean and sample std over the finite values (std 0 for one value, NaN for none)."""
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def aggregate(results: dict) -> dict[str, dict[str, Any]]:
    """method -> {metric: (mean, std)} + ``n`` seeds + mean accuracy matrices."""
    out: dict[str, dict[str, Any]] = {}
    for m in method_order(results):
        recs = [r for r in ok_records(results) if r["method"] == m]
        if not recs:
            continue
        agg: dict[str, Any] = {"n": len(recs), "trains": recs[0].get("describe", {}).get("trains", "")}
        for k in METRICS:
            agg[k] = mean_std([r.get(k) for r in recs])
        agg["cil_applicable"] = all(r.get("cil") is not None for r in recs)
        for key in ("til", "cil"):
            mats = [r[key] for r in recs if r.get(key) is not None]
            agg[key] = None if not mats or len(mats) < len(recs) else \
                [[statistics.fmean(mat[t][i] for mat in mats) for i in range(len(mats[0][t]))]
                 for t in range(len(mats[0]))]
        out[m] = agg
    return out
