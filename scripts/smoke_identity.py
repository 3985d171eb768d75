"""Record the `smoke` results of `lightcl learn` (learn_scenario) and of the suite's worker (run_one: lightcl and
sgd, seed 0) as JSON, so two trees can be compared exactly: run it on each and compare the files.

    .venv/bin/python scripts/smoke_identity.py /tmp/before.json   # on one tree
    .venv/bin/python scripts/smoke_identity.py /tmp/after.json    # on the other; then cmp the two
"""
import json
import os
import shutil
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
os.environ.setdefault("LIGHTCL_CACHE", "/tmp/lightcl-smoke-identity/cache")
out = Path(sys.argv[1])
base = Path(os.environ.get("SMOKE_IDENTITY_DIR", "/tmp/lightcl-smoke-identity"))
base.mkdir(parents=True, exist_ok=True)
from lightcl.export.pretrain import pretrain
from lightcl.export.onnx_export import export_checkpoint
ck = base / "digits16"
if not (base / "digits16.json").exists():
    pretrain("digits", ck, arch="resnet18", width=16, epochs=3, seed=0, progress=False)
ex = base / "exp"
if not (ex / "meta.json").exists():
    export_checkpoint(ck, ex, split="layer3", progress=False)
try:
    from lightcl.data.scenarios import get_scenario as gs
except ImportError:
    from lightcl.bench.scenarios import get_scenario as gs
from lightcl.bench.scenarios import get_scenario
from lightcl.bench.runner import learn_scenario
from lightcl.bench.suite import _frozen_figures, load_config, run_one
res = {}
st = out.parent / (out.stem + "-state"); shutil.rmtree(st, ignore_errors=True)
r = learn_scenario(ex, gs("smoke"), st, backend="ort", progress=False, echo=lambda s: None)
res["learn"] = {"til": r["til"], "cil": r["cil"]}
s = get_scenario("smoke")
for m in ("lightcl", "sgd"):
    spec = {"method": m, "seed": 0, "scenario": s.to_dict(), "ckpt": str(ck), "export_dir": str(ex),
            "hyperparameters": load_config(m, "smoke")["hyperparameters"], "threads": 1,
            "frozen": _frozen_figures(str(ck), "layer3", (3, 32, 32))}
    a = run_one(spec)
    res[m] = {"til": a["til"], "cil": a["cil"], "flops": a["train_flops"], "steps": a["steps"]}
out.write_text(json.dumps(res, indent=1))
print(json.dumps({k: (v["til"][-1], v["cil"][-1]) for k, v in res.items()}))
