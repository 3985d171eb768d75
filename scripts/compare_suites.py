#!/usr/bin/env python
"""Compare two suite outputs field by field: which record fields differ, per field, across every method-seed.

    python scripts/compare_suites.py BEFORE_DIR AFTER_DIR

Used to show a refactor keeps the numbers (issue 20): run ``lightcl bench suite --suite smoke --methods all``
on each tree (e.g. each installed with ``pip install --target`` and put first on PYTHONPATH), then compare.
Timing and memory fields always differ between two runs; every other field should not. Exit 1 when a field
outside MEASURED differs, or when the method-seeds differ.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# measurements of this run (time, RSS), and the spec hash that includes the config files' sha256
MEASURED = ("step_ms", "wall_s", "train_s", "rss", "session_create_ms", "run_key", "config/sha256",
            "started", "finished", "log")


def flat(d, p: str = "") -> dict:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in flat(val, f"{p}/{key}").items()}
    if isinstance(d, list):
        return {k: v for i, val in enumerate(d) for k, v in flat(val, f"{p}[{i}]").items()}
    return {p: d}


def main() -> int:
    a, b = (json.loads((Path(d) / "results.json").read_text())["records"] for d in sys.argv[1:3])
    ka, kb = ({(r["method"], r["seed"]): r for r in recs} for recs in (a, b))
    if set(ka) != set(kb):
        print("different method-seeds:", sorted(set(ka) ^ set(kb)))
        return 1
    counts: dict[str, int] = {}
    total = 0
    for k in sorted(ka):
        fa, fb = flat(ka[k]), flat(kb[k])
        total += len(set(fa) | set(fb))
        for f in set(fa) | set(fb):
            if fa.get(f) != fb.get(f):
                name = f.split("[")[0]
                counts[name] = counts.get(name, 0) + 1
    bad = {f: c for f, c in counts.items() if not any(m in f for m in MEASURED)}
    print(f"{len(ka)} method-seeds, {total} fields; differing: "
          + (", ".join(f"{f} x{c}" for f, c in sorted(counts.items())) or "none"))
    print("outside the measured fields:", bad or "none")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
