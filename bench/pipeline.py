"""The whole job for a scenario: data present -> pretrained backbone (cached) -> export (cached).

Used by ``lightcl demo`` and the benchmark suites so they start from the same pretrained weights.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from lightcl.data.datasets import load_dataset
from lightcl.data.errors import DatasetNotFoundError
from lightcl.engine.errors import IntegrityError, LightCLError
from lightcl.engine.paths import cache_dir

from .scenarios import Scenario


def ensure_dataset(name: str, echo: Callable[[str], None] = print, allow_apt: bool = True) -> None:
    """Make sure ``name`` loads. Fashion-MNIST: system folder, else ``apt-get install``, else download."""
    for part in name.split("+"):
        try:
            load_dataset(part, "test")
            continue
        except DatasetNotFoundError:
            if part != "fashion-mnist" or not allow_apt or not shutil.which("apt-get") or os.geteuid() != 0:
                raise
        echo("fashion-mnist not found: installing Debian's dataset-fashion-mnist (31 MB) with apt-get")
        for cmd in (["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"],
                    ["sh", "-c", "apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist"]):
            if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                break
        load_dataset(part, "test")  # raises the helpful message if it is still missing


def backbone_path(s: Scenario, seed: int = 0) -> Path:
    sub = f"-n{s.pretrain_subset}" if s.pretrain_subset else ""
    return cache_dir() / "backbones" / f"{s.pretrain_dataset}-{s.arch}-w{s.width}-e{s.pretrain_epochs}{sub}-s{seed}"


def ensure_backbone(s: Scenario, seed: int = 0, echo: Callable[[str], None] = print, progress: bool = True) -> Path:
    from lightcl.export.checkpoint import load_checkpoint
    from lightcl.export.pretrain import pretrain

    path = backbone_path(s, seed)
    try:
        _, meta = load_checkpoint(path)
        echo(f"backbone: cached {path} (test accuracy {meta['test_accuracy']:.3f} on {meta['dataset']})")
        return path
    except LightCLError:
        pass
    ensure_dataset(s.pretrain_dataset, echo)
    echo(f"backbone: pretraining {s.arch} width {s.width} on {s.pretrain_dataset} for {s.pretrain_epochs} epochs"
         + (f" ({s.pretrain_subset} images)" if s.pretrain_subset else "") + " ...")
    meta = pretrain(s.pretrain_dataset, path, arch=s.arch, width=s.width, epochs=s.pretrain_epochs, seed=seed,
                    subset=s.pretrain_subset, progress=progress)
    per_epoch = sum(meta["epoch_seconds"]) / len(meta["epoch_seconds"])
    echo(f"backbone: test accuracy {meta['test_accuracy']:.3f}, {per_epoch:.0f} s/epoch -> {path}")
    return path


def ensure_export(ckpt: Path, split: str | None = None, int8: bool = False, echo: Callable[[str], None] = print,
                  progress: bool = True) -> Path:
    """The cached export of ``ckpt`` split at ``split`` (None: the checkpoint's backbone's default split)."""
    from lightcl.engine.export_dir import load_export_meta
    from lightcl.export.onnx_export import export_checkpoint

    if split is None:
        from lightcl.engine.fileio import read_json
        from lightcl.export.checkpoint import checkpoint_paths
        from lightcl.export.zoo import default_split

        try:
            split = default_split(str(read_json(checkpoint_paths(ckpt)[1], "checkpoint metadata").get("arch")))
        except ValueError as e:
            raise IntegrityError(f"checkpoint {ckpt}: {e}") from None

    out = cache_dir() / "exports" / f"{ckpt.name}-{split}{'-int8' if int8 else ''}"
    try:
        meta = load_export_meta(out)
        echo(f"export: cached {out} (parity max abs diff {meta['parity']['max_abs_diff']:.2e})")
        return out
    except LightCLError:
        pass
    echo(f"export: splitting at {split}, frozen part -> ONNX{' + int8' if int8 else ''} ...")
    meta = export_checkpoint(ckpt, out, split=split, int8=int8, progress=progress)
    echo(f"export: parity max abs diff {meta['parity']['max_abs_diff']:.2e} -> {out}")
    return out
