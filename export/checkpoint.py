"""Backbone checkpoints: ``PATH.safetensors`` (weights) + ``PATH.json`` (what they are). No pickles."""
from __future__ import annotations

from pathlib import Path

import torch

from lightcl.engine.errors import IntegrityError, StateError
from lightcl.engine.fileio import read_json, sha256_file, write_bytes_atomic, write_json_atomic

from .zoo import Backbone, create_backbone

CKPT_FORMAT = "lightcl-backbone/1"


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """Accept ``PATH``, ``PATH.safetensors`` or ``PATH.json``; return both files."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def save_checkpoint(model: Backbone, path: str | Path, meta: dict) -> tuple[Path, Path]:
    from safetensors.torch import save

    st, js = checkpoint_paths(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(st, save(tensors, metadata={"format": CKPT_FORMAT}))
    full = {"format": CKPT_FORMAT, **model.config(), **meta, "weights": st.name, "sha256": sha256_file(st)}
    write_json_atomic(js, full)
    return st, js


def load_checkpoint(path: str | Path) -> tuple[Backbone, dict]:
    """Rebuild the backbone from its JSON and verify the weights' sha256 before loading them."""
    from safetensors.torch import load_file

    st, js = checkpoint_paths(path)
    if not js.is_file() or not st.is_file():
        raise StateError(f"checkpoint {path}: need both {st.name} and {js.name} (make one with `lightcl pretrain`)")
    meta = read_json(js, "checkpoint metadata")
    if meta.get("format") != CKPT_FORMAT:
        raise IntegrityError(f"{js} is not a lightcl backbone checkpoint")
    got = sha256_file(st)
    if got != meta.get("sha256"):
        raise IntegrityError(f"{st} does not match the sha256 in {js.name}: corrupt or replaced")
    model = create_backbone(meta["arch"], num_classes=int(meta["num_classes"]), width=int(meta["width"]),
                            in_channels=int(meta["input_size"][0]))
    try:
        model.load_state_dict(load_file(str(st)), strict=True)
    except RuntimeError as e:
        raise IntegrityError(f"{st}: weights do not fit {meta['arch']} width {meta['width']} ({e})") from None
    model.eval()
    return model, meta
