"""`lightcl bench update --ledger`: each mode's peak broken down into measured parts (width 16, digits)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lightcl.engine.errors import InputError


@pytest.fixture(scope="module")
def pruned16(digits_ckpt, tmp_path_factory):
    from lightcl.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("ledger") / "pruned"
    export_checkpoint(digits_ckpt, out, split="layer3", progress=False, sparsity=0.8, recover_epochs=0)
    return out


def test_ledger_parts_add_up_and_per_parameter_step_holds_fewer_gradients(digits_export, pruned16):
    from lightcl.bench.update import LEDGER_ROWS, bench_update, format_ledger

    res = bench_update(digits_export, batch=8, steps=1, warmup=0, threads=1, echo=lambda s: None,
                       modes=["lightcl", "lightcl-plain", "lightcl-sparse", "finetune"], sparse_export=pruned16)
    by = {r["mode"]: r for r in res["results"]}
    for r in by.values():
        led = r["ledger_mib"]
        assert all(led[k] is None or led[k] >= -0.5 for k in LEDGER_ROWS), led  # measured at one moment: noise
        total = sum(led[k] for k in LEDGER_ROWS if led[k] is not None) + led["unexplained"]
        assert total == pytest.approx(r["peak_rss_delta_mib"], abs=1e-6)
        at = r["ledger_at"]
        assert at["activations_saved_mib"] > 0 and led["head_weights"] > 0 and at["gradients_max_mib"] > 0
    # plain step: every gradient alive at once = the trainable weights; per-parameter: at most the largest
    plain, lean = by["lightcl-plain"], by["lightcl"]
    assert plain["ledger_at"]["gradients_max_mib"] == pytest.approx(plain["ledger_mib"]["head_weights"])
    assert lean["ledger_at"]["gradients_max_mib"] < 0.5 * lean["ledger_mib"]["head_weights"]
    assert by["lightcl"]["extractor"]["optimizer_step"] == "per-parameter"
    # the pruned export is smaller where it should be
    assert by["lightcl-sparse"]["ledger_mib"]["head_weights"] < 0.5 * by["lightcl"]["ledger_mib"]["head_weights"]
    assert by["lightcl-sparse"]["ledger_mib"]["frozen_weights"] < 0.5 * by["lightcl"]["ledger_mib"]["frozen_weights"]
    assert by["lightcl-sparse"]["extractor"]["sparsity"] >= 0.8
    # finetune saves the whole model's activations and has no runtime session. Compared as all saved in the step:
    # the "activations" row is what is alive at malloc's peak sample, which for finetune can fall after backward
    # freed them (CI measured 0.0 there once)
    assert by["finetune"]["ledger_mib"]["frozen_session"] == 0
    assert by["finetune"]["ledger_at"]["activations_saved_mib"] > by["lightcl"]["ledger_at"]["activations_saved_mib"]
    table = format_ledger(res)
    assert "unexplained" in table and "lightcl-sparse" in table and "theoretical" in table


def test_compose_backbone_of_a_pruned_export(pruned16):
    from lightcl.bench.update import compose_backbone
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor

    model, k, _ = compose_backbone(pruned16)
    ext, head = load_extractor(pruned16, backend="torch"), load_head(pruned16).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), head(ext(x)), atol=1e-5)


def test_sparse_modes_need_a_pruned_export(digits_export):
    from lightcl.bench.update import bench_update

    with pytest.raises(InputError, match="--sparse-export"):
        bench_update(digits_export, modes=["lightcl-sparse"], echo=lambda s: None)
    with pytest.raises(InputError, match="not a pruned export"):
        bench_update(digits_export, modes=["lightcl-sparse"], sparse_export=digits_export, echo=lambda s: None)
    r = subprocess.run([sys.executable, "-m", "lightcl", "bench", "update", str(digits_export), "--modes",
                        "lightcl-sparse", "--ledger"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "--sparse-export" in r.stderr, r.stderr


@pytest.mark.parametrize("step", ["per-parameter", "plain"])
def test_memory_report_counts_the_gradients_actually_held(digits_export, step, tmp_path):
    """memory_report's gradient bytes = what the gradient hooks measure during a real step."""
    from lightcl.bench.accounting import GradientMeter
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL

    from safetensors.torch import load_file

    from lightcl.bench.update import prepare_data

    d = load_file(str(prepare_data(digits_export, 8, tmp_path / "b.safetensors")))
    x, y = d["xa"], d["ya"]
    learner = LightCL(load_extractor(digits_export, backend="torch"), load_head(digits_export), optimizer_step=step)
    learner.begin_task(0, sorted(set(y.tolist())))
    gm = GradientMeter(learner.head.parameters())
    learner.observe(x, y)
    gm.remove()
    rep = learner.memory_report()
    sizes = [p.numel() * p.element_size() for p in learner.head.parameters()]
    assert rep["optimizer_step"] == step
    assert rep["head_grads_bytes"] == gm.peak
    assert rep["head_grads_bytes"] == (max(sizes) if step == "per-parameter" else sum(sizes))
    assert rep["head_weights_bytes"] == sum(sizes)



_MMAP_PROBE = r"""
import ctypes, json, os, sys
from lightcl.engine.allocator import apply_lean_malloc
state = apply_lean_malloc()
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
big = libc.malloc(4 << 20)   # mmapped either way; freeing it raises glibc's dynamic threshold to 4 MiB
libc.free(big)
before = libc.mallinfo2().hblkhd
p = libc.malloc(1 << 20)     # 1 MiB: its own mapping only with a fixed 64 KiB threshold
mapped = libc.mallinfo2().hblkhd - before >= (1 << 20)
libc.free(p)
print(json.dumps({"state": state, "mapped": mapped}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
@pytest.mark.parametrize("env, lean", [({}, False), ({"LIGHTCL_MALLOC": "system"}, False),
                                       ({"LIGHTCL_MALLOC": "lean"}, True),
                                       ({"LIGHTCL_MALLOC": "lean", "MALLOC_ARENA_MAX": "4"}, False)])
def test_lean_malloc_is_opt_in_and_really_changes_glibc(env, lean):
    """``LIGHTCL_MALLOC=lean`` really changes glibc's behaviour (a 1 MiB block after a freed 4 MiB one is its
    own mapping, returned on free); unset it leaves glibc alone, and so it does when the user set malloc."""
    import json
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LIGHTCL_MALLOC"}
    r = subprocess.run([sys.executable, "-c", _MMAP_PROBE], capture_output=True, text=True, timeout=120,
                       env={**base, **env})
    if r.returncode != 0 and "mallinfo2" in r.stderr:
        pytest.skip("glibc < 2.33 (no mallinfo2)")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["state"]["lean"] is lean and out["mapped"] is lean, out
