"""Shared fixtures: a width-16 ResNet-18 pretrained on digits, made once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_ckpt(tmp_path_factory) -> Path:
    """A real (tiny) pretrained backbone: resnet18 width 16, 3 epochs on digits (~6 s)."""
    from lightcl.export.pretrain import pretrain

    out = tmp_path_factory.mktemp("ckpt") / "digits16"
    pretrain("digits", out, arch="resnet18", width=16, epochs=3, seed=0, progress=False)
    return out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's ~/.cache/lightcl from tests."""
    monkeypatch.setenv("LIGHTCL_CACHE", str(tmp_path / "cache"))
    yield


@pytest.fixture(scope="session")
def digits_export(digits_ckpt, tmp_path_factory) -> Path:
    """The digits backbone split at layer3 and exported (frozen.onnx, head.safetensors, meta.json)."""
    from lightcl.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("export") / "digits16-layer3"
    export_checkpoint(digits_ckpt, out, split="layer3", progress=False)
    return out


def write_counts(kind: str, counts) -> None:
    """Reliability tests count what they tried; with LIGHTCL_RELIABILITY_DIR set, each xdist worker
    writes its counts there (the closing table is their sum)."""
    import json

    if not counts:
        return
    out = os.environ.get("LIGHTCL_RELIABILITY_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        (Path(out) / f"{kind}.{worker}.json").write_text(json.dumps(counts, indent=1, sort_keys=True))
