"""Backbone checkpoints: ``PATH.safetensors`` (weights) + ``PATH.json`` (what they are). No pickles."""
from __future__ import annotations

import os
from pathlib import Path


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


def _field(meta: dict, key: str, js: Path, lo: int, hi: int) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise IntegrityError(f"{js}: {key} must be an integer in [{lo}, {hi}], got {str(v)[:40]!r}")
    return v


def load_checkpoint(path: str | Path) -> tuple[Backbone, dict]:
    """Rebuild the backbone from its JSON and verify the weights' sha256 before loading them.

    Every malformed piece is one :class:`IntegrityError` line: a missing or mistyped arch/width/num_classes/
    input_size, a safetensors file that is empty, has an absurd header length or a non-JSON header; the bytes
    whose sha256 is checked are the bytes loaded.
    """
    import hashlib

    from safetensors.torch import load

    from lightcl.engine.fileio import read_buffer

    from .zoo import list_backbones

    st, js = checkpoint_paths(path)
    if not os.path.lexists(js) or not os.path.lexists(st):
        raise StateError(f"checkpoint {path}: need both {st.name} and {js.name} (make one with `lightcl pretrain`)")
    meta = read_json(js, "checkpoint metadata")
    if meta.get("format") != CKPT_FORMAT:
        raise IntegrityError(f"{js} is not a lightcl backbone checkpoint")
    arch = meta.get("arch")
    if not isinstance(arch, str) or arch not in list_backbones():
        raise IntegrityError(f"{js}: arch must be one of {', '.join(list_backbones())}, got {str(arch)[:40]!r}")
    width = _field(meta, "width", js, 1, 1024)
    num_classes = _field(meta, "num_classes", js, 1, 1 << 20)
    size = meta.get("input_size")
    if not isinstance(size, list) or len(size) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= 4096
                                                           for v in size):
        raise IntegrityError(f"{js}: input_size must be [C, H, W] of positive integers, got {str(size)[:60]}")
    try:
        data = read_buffer(st, "checkpoint weights", max_bytes=1 << 34)
    except OSError as e:
        raise StateError(f"checkpoint {st} cannot be read ({e})") from None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise IntegrityError(f"{st} does not match the sha256 in {js.name}: corrupt or replaced")
    try:
        tensors = load(bytes(data))
    except Exception as e:  # safetensors' own error type: empty file, absurd header length, non-JSON header
        raise IntegrityError(f"{st} is not a readable safetensors file ({' '.join(str(e).split())[:200]})") from None
    model = create_backbone(arch, num_classes=num_classes, width=width, in_channels=size[0])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise IntegrityError(f"{st}: weights do not fit {arch} width {width} "
                             f"({' '.join(str(e).split())[:300]})") from None
    bad = [k for k, v in tensors.items() if v.dtype != model.state_dict()[k].dtype]
    if bad:
        raise IntegrityError(f"{st}: tensor {bad[0]} is {tensors[bad[0]].dtype}, the model's is "
                             f"{model.state_dict()[bad[0]].dtype}")
    model.eval()
    return model, meta
