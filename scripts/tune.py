#!/usr/bin/env python
"""Choose a hyperparameter on the validation stream, never on a reported test number (docs/tuning.md).

For every method and every grid value, run ``lightcl bench suite --suite offline-val-novel`` (a backbone
pretrained on Fashion-MNIST classes 0-3 learning classes 4-9 from training images no pretraining saw: new
classes, as on ``offline``) with the method's cited config, that one value changed; keep the value with the best final class-incremental accuracy per measured MiB of peak memory
(the product's objective; ties: CIL, TIL, then the value the cited config already had). ``--write-configs`` records the choices as cited
scenario entries in bench/configs/METHOD.json for the scenarios named by ``--for``, so the reported suites
(``offline``, ``offline-blurry``) run with them and their records cite this file.

    python scripts/tune.py --methods er,derpp,latent-replay --grid lr=0.003,0.01,0.03,0.1 \\
        --epochs 3 --jobs 2 --out /tmp/tune --for offline,offline-blurry --write-configs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lightcl.bench.suite import CONFIG_DIR, check_method_config
from lightcl.engine.fileio import write_bytes_atomic

# methods that learn with another method's chosen values (the same learner and loss, no boundaries)
FOLLOWS = {"lightcl-replay-free": "lightcl-replay"}


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_grid(text: str) -> tuple[str, list]:
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise SystemExit(f"--grid: expected KEY=V1,V2,..., got {text!r}")
    return key, [_value(v) for v in values.split(",") if v]


def candidate_config(method: str, key: str, value, out: Path, fixed: dict | None = None) -> Path:
    """The cited ``METHOD.json`` with ``fixed`` (values an earlier pass chose) and ``default[key] = value``
    (the validation scenario has no entry of its own)."""
    doc = json.loads((CONFIG_DIR / f"{method}.json").read_text())
    doc["default"].update(fixed or {})
    doc["default"][key] = value
    doc["source"] = f"{doc.get('source', '')}; {key} = {value} (a tuning candidate, scripts/tune.py)"
    path = out / "configs" / (_tag(fixed) + f"{method}@{key}={value}") / f"{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    check_method_config(path)
    return path


def _tag(fixed: dict | None) -> str:
    return "".join(f"{k}={v}," for k, v in sorted((fixed or {}).items()))


def run_candidate(args, method: str, key: str, value) -> dict:
    cfg = candidate_config(method, key, value, args.out, args.fixed)
    run_dir = args.out / "runs" / (_tag(args.fixed) + f"{method}@{key}={value}")
    cmd = [sys.executable, "-m", "lightcl", "bench", "suite", "--suite", args.suite, "--methods", method,
           "--seeds", str(args.seeds), "--epochs", str(args.epochs), "--threads", "1", "--method-config", str(cfg),
           "--out", str(run_dir), "--no-plots", "--quiet"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{method} {key}={value} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    recs = [r for r in json.loads((run_dir / "results.json").read_text())["records"] if r.get("status") == "ok"]
    if len(recs) != args.seeds:
        raise SystemExit(f"{method} {key}={value}: {len(recs)} of {args.seeds} runs finished ({run_dir})")
    mean = lambda f: sum(r[f] for r in recs) / len(recs)  # noqa: E731
    row = {"method": method, "key": key, "value": value, "final_cil": mean("final_cil"),
           "final_til": mean("final_til"), "peak_mib": mean("peak_rss_delta_mib"), "seeds": args.seeds,
           "run": str(run_dir)}
    row["cil_per_mib"] = 100 * row["final_cil"] / row["peak_mib"]
    print(f"{method} {key}={value}: CIL {100 * row['final_cil']:.2f}  TIL {100 * row['final_til']:.2f}  "
          f"peak {row['peak_mib']:.1f} MiB", flush=True)
    return row


def choose(rows: list[dict], cited) -> dict:
    """Best final CIL per measured MiB (the product's objective: accuracy in a memory budget); ties: CIL, TIL,
    then the cited value."""
    return max(rows, key=lambda r: (round(r["cil_per_mib"], 6), round(r["final_cil"], 6), round(r["final_til"], 6),
                                    r["value"] == cited))


def write_choice(method: str, key: str, value, scenarios: list[str], suite: str, epochs: int, seeds: int,
                 leader: str | None = None) -> None:
    path = CONFIG_DIR / f"{method}.json"
    doc = json.loads(path.read_text())
    whose = f" ({leader}'s choice: the same learner and loss)" if leader else ""
    for name in scenarios:
        entry = dict(doc.setdefault("scenarios", {}).get(name, {}))
        entry[key] = value
        entry["source"] = (f"{doc.get('source', '')}; {key} {value}{whose} chosen on the validation stream "
                           f"'{suite}' ({epochs} epochs, {seeds} seed(s)) by scripts/tune.py: docs/tuning.md")
        doc["scenarios"][name] = entry
    tuned = f"The {', '.join(scenarios)} entries' {key} was chosen on a validation stream (docs/tuning.md)."
    note = doc.get("note", "")
    doc["note"] = note if tuned in note else f"{note} {tuned}".strip()
    write_bytes_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", required=True, help="comma list of benchmark methods to tune")
    p.add_argument("--grid", required=True, help="KEY=V1,V2,... (one hyperparameter), e.g. lr=0.01,0.03,0.1")
    p.add_argument("--set", dest="fixed", action="append", default=[], metavar="KEY=VALUE",
                   help="hold KEY at VALUE in every candidate (a value an earlier pass chose); repeatable")
    p.add_argument("--suite", default="offline-val-novel",
                   help="the validation scenario (default offline-val-novel: classes its backbone never saw)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per candidate (default 1)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per task (default 3, as the reported runs)")
    p.add_argument("--jobs", type=int, default=1, help="candidates run at once (default 1; at most the cores)")
    p.add_argument("--out", type=Path, required=True, help="directory for the candidates' runs and tuning.json")
    p.add_argument("--for", dest="targets", default="offline",
                   help="scenarios whose config entries get the choice with --write-configs (default offline)")
    p.add_argument("--write-configs", action="store_true", help="write the choices into bench/configs/METHOD.json")
    args = p.parse_args(argv)
    if not 1 <= args.jobs <= (os.cpu_count() or 1) or not 1 <= args.seeds <= 10 or not 1 <= args.epochs <= 100:
        raise SystemExit("--jobs must be 1..cores, --seeds 1..10, --epochs 1..100")
    key, values = parse_grid(args.grid)
    args.fixed = {k: v[0] for k, v in (parse_grid(f) for f in args.fixed)}
    methods = [m for m in args.methods.split(",") if m]
    args.out.mkdir(parents=True, exist_ok=True)
    cited = {m: json.loads((CONFIG_DIR / f"{m}.json").read_text())["default"].get(key) for m in methods}
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda mv: run_candidate(args, mv[0], key, mv[1]),
                             [(m, v) for m in methods for v in values]))
    chosen = {m: choose([r for r in rows if r["method"] == m], cited[m]) for m in methods}
    report = {"suite": args.suite, "epochs": args.epochs, "seeds": args.seeds, "key": key, "grid": values,
              "fixed": args.fixed,
              "cited": cited, "rows": rows, "chosen": {m: r["value"] for m, r in chosen.items()}}
    fd, tmp = tempfile.mkstemp(dir=args.out, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, args.out / f"tuning-{_tag(args.fixed)}{key}.json")
    print(f"\n| method | cited {key} | " + " | ".join(f"{key} {v}: CIL / TIL / peak MiB" for v in values)
          + " | chosen |")
    print("|---|---|" + "---|" * len(values) + "---|")
    for m in methods:
        cells = [f"{100 * r['final_cil']:.2f} / {100 * r['final_til']:.2f} / {r['peak_mib']:.1f}"
                 for r in rows if r["method"] == m]
        print(f"| `{m}` | {cited[m]} | " + " | ".join(cells) + f" | **{chosen[m]['value']}** |")
    if args.write_configs:
        targets = [t for t in args.targets.split(",") if t]
        for m in methods:
            write_choice(m, key, chosen[m]["value"], targets, args.suite, args.epochs, args.seeds)
        for follower, leader in FOLLOWS.items():
            if leader in chosen and (CONFIG_DIR / f"{follower}.json").is_file():
                write_choice(follower, key, chosen[leader]["value"], targets, args.suite, args.epochs, args.seeds,
                             leader=leader)
        print(f"wrote the choices into bench/configs for {', '.join(targets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
