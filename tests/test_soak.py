"""Bounded resources: 50 continual-learning tasks in one process (fresh class ids over real digits images,
expandable classifier), RSS measured after every task; the least-squares slope after a warm-up must stay
near what the growing classifier accounts for. ``scripts/soak.py`` is the same loop for longer runs.
"""
from __future__ import annotations

import collections
import ctypes
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
COUNTS: collections.Counter = collections.Counter()
TASKS, WARMUP = 50, 10
# MiB per task. What is expected: two classifier rows (weights + grads + momentum, ~3 KiB) and two
# logits per buffered target (~0.003 MiB). Measured: 0.004-0.007. A leak of one buffered batch per task
# (~0.23 MiB at width 16), of one head per task (~2 MiB), or safetensors' ctypes cache (~0.04 MiB per
# save with a growing classifier, fixed) is above this bound.
SLOPE_BOUND = 0.03


def _soak_module():
    spec = importlib.util.spec_from_file_location("lightcl_soak_script", ROOT / "scripts" / "soak.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _record(name: str, obj) -> None:
    out = os.environ.get("LIGHTCL_RELIABILITY_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{name}.json").write_text(json.dumps(obj, indent=1, sort_keys=True))


def test_soak_50_tasks_rss_slope_is_bounded(digits_export, tmp_path):
    soak = _soak_module()
    res = soak.run_soak(digits_export, tasks=TASKS, steps=3, batch=16, warmup=WARMUP, state_dir=tmp_path / "state")
    slope = res["rss_slope_mib_per_task"]
    print(f"\nsoak: {TASKS} tasks, {res['classes']} classes, RSS {res['rss_first_mib']:.1f} -> {res['rss_last_mib']:.1f} MiB, "
          f"slope {slope:.4f} MiB/task (expected {res['expected_slope_mib_per_task']:.4f}), {res['wall_s']:.1f} s")
    _record("soak", {k: v for k, v in res.items() if k not in ("memory_bytes", "buffer_len", "mask_elements")})
    # structure: fixed-size buffer and masks; the only tensor growth is the classifier and the buffered logits
    assert res["classes"] == 2 * TASKS
    assert set(res["buffer_len"][1:]) == {15}
    assert len(set(res["mask_elements"])) == 1
    growth = [b - a for a, b in zip(res["memory_bytes"][1:], res["memory_bytes"][2:])]
    assert set(growth) == {2 * 4 * 15}, growth  # two more logits per buffered sample, float32
    assert slope < SLOPE_BOUND, f"RSS grows {slope:.4f} MiB per task (bound {SLOPE_BOUND})"


def test_saving_a_growing_head_does_not_leak_ctypes_types(tmp_path):
    """safetensors.torch.save views tensors through np.ctypeslib.as_array, which caches a new ctypes type
    per distinct byte size forever: a classifier that grows each task leaked ~6 KiB per save."""
    from lightcl.engine.learner import LightCL
    from lightcl.export.zoo import create_backbone, split_backbone

    cache = getattr(ctypes, "_pointer_type_cache", None)
    if cache is None:
        pytest.skip("this Python has no ctypes._pointer_type_cache")

    class Stub:
        frozen_id, meta = "soak", {"input_shape": [3, 32, 32]}

        def __init__(self, f):
            self.f = f

        def __call__(self, x):
            with torch.no_grad():
                return self.f(x)

    frozen, head = split_backbone(create_backbone("resnet18", width=16).eval(), "layer3")
    lr = LightCL(Stub(frozen), head, num_classes=None, momentum=0.9)
    x = torch.randn(4, 3, 32, 32)
    lr.begin_task(0, [0, 1])
    lr.observe(x, torch.tensor([0, 1, 0, 1]))
    lr.end_task()
    lr.save(tmp_path / "s")
    before = len(cache)
    for t in range(1, 21):
        lr.begin_task(t, [2 * t, 2 * t + 1])
        lr.observe(x, torch.tensor([2 * t, 2 * t + 1] * 2))
        lr.end_task()
        lr.save(tmp_path / "s")
    assert len(cache) - before <= 2, f"{len(cache) - before} ctypes types cached by 20 saves"
