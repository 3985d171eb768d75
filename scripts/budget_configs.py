"""Write the budget-sweep configs: ``bench/configs/METHOD.json`` with ``replay_budget`` replaced in the default
and in every scenario entry, one ``OUT/<budget>/METHOD.json`` per budget (``--method-config`` wants that name).

Derived, never edited by hand, so a sweep always runs the committed method with only the budget changed::

    python scripts/budget_configs.py --budgets 0.25MiB,1MiB,4MiB,16MiB --out docs/results/replay-budget
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lightcl.bench.methods import REGISTRY
from lightcl.bench.suite import CONFIG_DIR, check_method_config
from lightcl.engine.errors import InputError
from lightcl.engine.fileio import write_bytes_atomic
from lightcl.engine.replay import parse_bytes


def budget_config(method: str, budget: str) -> dict:
    doc = json.loads((CONFIG_DIR / f"{method}.json").read_text())
    tail = f"; replay_budget {budget} (the budget sweep)"
    doc["source"] = f"{method}'s config (bench/configs/{method}.json) with replay_budget {budget} (the budget sweep)"
    doc["default"]["replay_budget"] = budget
    for entry in doc.get("scenarios", {}).values():
        entry["replay_budget"] = budget
        entry["source"] = entry.get("source", "") + tail
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="lightcl-replay", help="the method whose config is swept")
    p.add_argument("--budgets", required=True, help="comma list, e.g. 0.25MiB,1MiB,4MiB,16MiB")
    p.add_argument("--out", type=Path, required=True, help="directory; OUT/<budget>/METHOD.json is written")
    args = p.parse_args(argv)
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    try:
        for b in budgets:  # every budget checked before anything is written
            parse_bytes(b)
        if args.method not in REGISTRY or not (CONFIG_DIR / f"{args.method}.json").is_file():
            raise InputError(f"--method: no benchmark method with a config named {args.method!r}")
        for budget in budgets:
            path = args.out / budget / f"{args.method}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, (json.dumps(budget_config(args.method, budget), indent=2) + "\n").encode())
            check_method_config(path)
            print(f"wrote {path}")
    except InputError as e:
        raise SystemExit(f"budget_configs: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
