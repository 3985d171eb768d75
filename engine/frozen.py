"""The frozen lower/middle layers as a plain torch module, rebuilt on the device from block specs.

``frozen.safetensors`` holds the weights of the frozen part plus, in its safetensors metadata, the
JSON list of block specs (``{"name", "type", ...}``: each registered block type's own fields, e.g.
``"cin"``, ``"cout"``, ``"stride"`` plus ``"mid"``/``"shortcut"`` for a basic block of a pruned export) so the
device can rebuild the network with :func:`lightcl.engine.blocks.build_block` alone: no exporter code, no pickle.
An export of any other network (``lightcl.export.intake``) carries a ``"graph"`` entry instead: the JSON graph
spec of :mod:`lightcl.engine.graphspec` (built-in layers and whitelisted operations only), rebuilt as a
:class:`GraphFrozenNet`; the weights are keyed by the user's own module paths.
This is what the torch extractor backend runs (the reference, and the paper-faithful
``frozen_bn="train"`` mode); the ONNX file is the optimised copy of the same weights.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from .blocks import build_block
from .errors import IntegrityError, StateError
from .graphspec import GraphNet, check_spec

FROZEN_FORMAT = "lightcl-frozen/1"


class _Freezable:
    """What the extractor needs of a frozen part besides ``forward``."""

    def freeze(self):
        """Parameters never get gradients (Maintain Generalizability); eval-mode BN."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def set_bn_mode(self, mode: str) -> None:
        """``"eval"``: fixed BN statistics (the export's semantics). ``"train"``: BN normalises with
        batch statistics and its running statistics drift, as in the authors' code (``model.train()``);
        parameters stay frozen either way."""
        if mode not in ("eval", "train"):
            raise ValueError(f"frozen_bn must be 'eval' or 'train', got {mode!r}")
        self.eval()
        if mode == "train":
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()


class GraphFrozenNet(_Freezable, GraphNet):
    """The frozen part of a graph export: a :class:`~lightcl.engine.graphspec.GraphNet` (input -> features)."""

    block_names: list = []


class FrozenNet(_Freezable, nn.Module):
    """The backbone's blocks (``stem``, ``layer1.0``, ... or ``stem``, ``stage1.0``, ...) up to the split point, in
    order. ``forward`` chains them."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        super().__init__()
        if not specs:
            raise ValueError("a frozen part needs at least one block")
        self.specs: list[dict[str, Any]] = json.loads(json.dumps(list(specs)))
        self.block_names: list[str] = [str(s["name"]) for s in self.specs]
        self.blocks = nn.ModuleList(build_block(s) for s in self.specs)

    def forward(self, x: Tensor) -> Tensor:
        for b in self.blocks:
            x = b(x)
        return x


def block_specs(names: Iterable[str], blocks: Iterable[nn.Module]) -> list[dict[str, Any]]:
    """``[{"name": n, **block.spec()}]`` for any module list whose blocks have ``spec()``."""
    out = []
    for n, b in zip(names, blocks):
        if not hasattr(b, "spec"):
            raise ValueError(f"block {n!r} ({type(b).__name__}) has no spec(): cannot be rebuilt on the device")
        out.append({"name": str(n), **b.spec()})
    return out


def frozen_to_bytes(module: nn.Module, names: list[str], extra: dict[str, Any] | None = None) -> bytes:
    """Serialise a module with ``.blocks`` (ModuleList) into safetensors bytes with its specs in metadata."""
    from safetensors.torch import save

    specs = block_specs(names, module.blocks)
    meta = {"format": FROZEN_FORMAT, "blocks": json.dumps(specs, sort_keys=True)}
    for k, v in (extra or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    # Only the blocks' state is stored (FrozenNet's state dict has exactly these keys).
    return save(tensors, metadata=meta)


def graph_frozen_to_bytes(net: GraphNet, extra: dict[str, Any] | None = None) -> bytes:
    """A graph export's frozen part as safetensors bytes: its graph spec in the metadata."""
    from safetensors.torch import save

    meta = {"format": FROZEN_FORMAT, "graph": json.dumps(net.spec, sort_keys=True)}
    for k, v in (extra or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, metadata=meta)


def save_frozen(path: str | Path, module: nn.Module, names: list[str], extra: dict[str, Any] | None = None) -> None:
    """Write ``frozen.safetensors``: block specs for a FrozenNet-like module, the graph spec for a GraphNet."""
    from .fileio import write_bytes_atomic

    data = graph_frozen_to_bytes(module, extra) if isinstance(module, GraphNet) else frozen_to_bytes(module, names, extra)
    write_bytes_atomic(path, data)


def read_frozen_metadata(path: str | Path) -> dict[str, Any]:
    """The safetensors metadata of ``frozen.safetensors``, JSON values decoded."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise StateError(f"frozen weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types on corrupt headers
        raise IntegrityError(f"{path} is not a readable safetensors file ({e})") from None
    if raw.get("format") != FROZEN_FORMAT or ("blocks" not in raw and "graph" not in raw):
        raise IntegrityError(f"{path} is not a lightcl frozen part (metadata format {raw.get('format')!r})")
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return meta


def load_frozen(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the frozen part from ``frozen.safetensors``: ``(FrozenNet or GraphFrozenNet in eval mode,
    metadata)``. A graph spec is checked in full before any layer is allocated."""
    from safetensors.torch import load_file

    meta = read_frozen_metadata(path)
    if "graph" in meta:
        check_spec(meta["graph"], f"{path}: graph spec")
        try:
            net = GraphFrozenNet(meta["graph"], where=f"{path}: graph spec")
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise IntegrityError(f"{path}: graph spec in its metadata is unusable ({e})") from None
    else:
        try:
            net = FrozenNet(meta["blocks"])
        except (KeyError, TypeError, ValueError) as e:
            raise IntegrityError(f"{path}: block specs in its metadata are unusable ({e})") from None
    try:
        tensors = load_file(str(path), device=str(map_location))
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise IntegrityError(f"{path}: tensors do not match its block specs ({e})") from None
    net.to(map_location)
    return net.freeze(), meta
