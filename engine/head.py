"""The trainable deep part: the backbone's blocks after the split point + pooling + classifier.

Rebuilt on the device from a JSON config, so ``head.safetensors`` alone (no pickle, no exporter
code) is enough to train and predict. Two kinds of config: block specs (:class:`Head`, the zoo's
backbones) and a graph spec (:class:`GraphHead`, any traced network: ``lightcl.export.intake``).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import block_tap_names, build_block, forward_block_taps
from .classifier import fresh_classifier, grown_classifier
from .errors import IntegrityError, NonFiniteError, StateError
from .graphspec import GraphNet, check_spec

HEAD_FORMAT = "lightcl-head/1"


class Head(nn.Module):
    """Deep layers + global average pool + linear classifier.

    ``config``: ``{"blocks": [{"name": "layer4.0", "type": "basic", "cin":..,"cout":..,"stride":..}, ...],
    "in_features": [C, H, W], "num_classes": K, "feat_dim": D}``; every block spec is rebuilt by
    :func:`lightcl.engine.blocks.build_block` from its registered ``type`` (any backbone family). A block of
    a pruned export also carries ``"mid"`` (its first conv's width) and ``"shortcut"`` where they differ
    from the dense defaults, and ``feat_dim`` is the last block's pruned width: the head is rebuilt from
    these counts, no special case.
    """

    classifier_key = "fc"  # the classifier's prefix in state_dict()

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = json.loads(json.dumps(config))  # deep copy, JSON-clean
        self.block_names: list[str] = [b["name"] for b in config["blocks"]]
        self.blocks = nn.ModuleList(build_block(b) for b in config["blocks"])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(int(config["feat_dim"]), int(config["num_classes"]))

    @property
    def in_features(self) -> tuple[int, int, int]:
        c, h, w = self.config["in_features"]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def tap_names(self) -> list[str]:
        """LightCL's feature taps, as in the authors' code: for every block of the head the internal taps its
        type declares (a basic block: its first conv after BN+ReLU, ``<block>.conv1``) and the block's output;
        then the logits. The rule lives in :func:`lightcl.engine.blocks.block_tap_names`."""
        names = []
        for name, block in zip(self.block_names, self.blocks):
            names.extend(block_tap_names(name, block))
        names.append("logits")
        return names

    def forward(self, f: Tensor, return_taps: bool = False):
        taps: dict[str, Tensor] = {}
        x = f
        for name, block in zip(self.block_names, self.blocks):
            x = forward_block_taps(name, block, x, taps) if return_taps else block(x)
        logits = self.fc(torch.flatten(self.pool(x), 1))
        if return_taps:
            taps["logits"] = logits
            return logits, taps
        return logits

    def reset_classifier(self, num_classes: int, generator: torch.Generator | None = None) -> None:
        """Fresh classifier for the continual-learning classes (xavier weights, zero bias), as the
        authors replace the pretrained one."""
        self.fc = fresh_classifier(self.fc.in_features, num_classes, generator, like=self.fc)
        self.config["num_classes"] = num_classes

    def expand_classes(self, num_classes: int, generator: torch.Generator | None = None) -> None:
        """Grow the classifier to ``num_classes`` outputs, keeping the learned rows (new rows: xavier)."""
        if num_classes <= self.fc.out_features:
            return
        self.fc = grown_classifier(self.fc, num_classes, generator)
        self.config["num_classes"] = num_classes

    # --- persistence (safetensors + config in its metadata) ---
    def save(self, path: str | Path) -> None:
        from .fileio import safetensors_bytes, write_bytes_atomic

        meta = {"format": HEAD_FORMAT, "config": json.dumps(self.config, sort_keys=True)}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        for k, v in tensors.items():  # what load refuses is never written (the file at path is left as it was)
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise NonFiniteError(f"refusing to save the head to {path}: tensor {k} holds NaN or Inf values")
        write_bytes_atomic(path, safetensors_bytes(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path, map_location: str = "cpu") -> "Head":
        path = Path(path)
        if not path.is_file():
            raise StateError(f"head file not found: {path}")
        try:
            from .fileio import read_buffer

            data = read_buffer(path)
        except OSError as e:
            raise StateError(f"head file {path} is unreadable ({e})") from None
        return cls.from_bytes(data, map_location=map_location, where=str(path))

    @classmethod
    def from_bytes(cls, data: bytes, map_location: str = "cpu", where: str = "head.safetensors") -> "Head":
        """A head from the bytes of a ``head.safetensors`` (verified by the caller: the bytes checked are the
        bytes used, so a file replaced between check and use cannot slip in)."""
        from safetensors.torch import load

        def load_tensors(blob):
            # A writable buffer becomes the parameters' storage (no second copy of the weights: the load
            # peak on a device is one head, not two); immutable bytes go through safetensors.
            return tensors_in_buffer(blob) if isinstance(blob, bytearray) else load(blob)

        try:
            meta = read_safetensors_metadata(data)
            tensors = load_tensors(data)
        except Exception as e:  # safetensors raises its own error types on corrupt headers
            raise IntegrityError(f"{where} is not a readable safetensors file ({e})") from None
        if meta.get("format") != HEAD_FORMAT or "config" not in meta:
            raise IntegrityError(f"{where} is not a lightcl head (metadata format {meta.get('format')!r})")
        try:
            config = json.loads(meta["config"])
            klass = GraphHead if isinstance(config, dict) and "graph" in config else cls
            if klass is GraphHead:
                GraphHead.check_config(config, where)  # every size checked before anything is allocated
            if _ASSIGN:
                with torch.device("meta"):  # no second copy of the weights: the loaded tensors are assigned
                    head = klass(config)
            else:  # torch < 2.1 (Jetson floor, docs/device-floor.md): build, then copy the weights in
                head = klass(config)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError, OverflowError) as e:
            raise IntegrityError(f"{where}: malformed head config in its metadata ({type(e).__name__}: {e})") from None
        want = head.state_dict()
        for k, t in tensors.items():  # float64/float16 tensors loaded and then failed (or ran in the wrong precision)
            if k in want and t.dtype != want[k].dtype:
                raise IntegrityError(f"{where}: tensor {k} is {t.dtype}, a head's is {want[k].dtype}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise IntegrityError(f"{where}: tensor {k} holds NaN or Inf values")
        try:
            head.load_state_dict(tensors, strict=True, **({"assign": True} if _ASSIGN else {}))
        except RuntimeError as e:
            first = " ".join(str(e).split())[:300]
            raise IntegrityError(f"{where}: tensors do not match the head config ({first})") from None
        if isinstance(head, GraphHead):
            head.net.refresh()
        return head.to(map_location)


class GraphHead(Head):
    """The trainable part of a graph export: a :class:`~lightcl.engine.graphspec.GraphNet` from features to logits.

    ``config``: ``{"graph": <graph spec>, "classifier": "fc", "taps": [[tap, node], ...], "in_features": [C, H, W],
    "num_classes": K, "feat_dim": D}``. ``classifier`` names the ``Linear`` whose output is the graph's output
    (the logits; :attr:`fc`). ``taps`` are LightCL's feature taps, chosen at export: the output of each
    block-level submodule of the head (``layer4.0``, ``layer4.1``, ...: the last node traced inside it), then
    ``"logits"``. ``num_classes`` overrides the classifier's ``out_features`` (a grown or reset classifier is
    saved with its current size).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        nn.Module.__init__(self)
        self.config = json.loads(json.dumps(config))
        cls_path = str(self.config["classifier"])
        self.net = GraphNet(self.config["graph"], where="head graph spec",
                            overrides={cls_path: {"out_features": int(self.config["num_classes"])}})
        self.classifier_path = cls_path
        self.classifier_key = "net." + cls_path
        self._taps = [(str(t), str(n)) for t, n in self.config.get("taps", [])]
        self.block_names = [t for t, _ in self._taps]

    @staticmethod
    def check_config(config: Any, where: str = "head config") -> None:
        """Everything :class:`GraphHead` reads from ``config``, as one :class:`IntegrityError` line."""
        if not isinstance(config, dict):
            raise IntegrityError(f"{where}: head config is not an object")
        spec = config.get("graph")
        check_spec(spec, f"{where}: graph spec")
        cls_path = config.get("classifier")
        mod = spec["modules"].get(cls_path) if isinstance(cls_path, str) else None
        if mod is None or mod["type"] != "Linear":
            raise IntegrityError(f"{where}: classifier {str(cls_path)[:60]!r} is not a Linear layer of the graph")
        out = spec["nodes"][-1]["args"][0]
        last = [n for n in spec["nodes"] if n["op"] == "call_module" and n["target"] == cls_path]
        if len(last) != 1 or out != {"node": last[0]["name"]}:
            raise IntegrityError(f"{where}: the graph's output must be the classifier {cls_path!r} called once")
        k = config.get("num_classes")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 1 << 24:
            raise IntegrityError(f"{where}: num_classes must be an integer in [0, {1 << 24}]")
        names = {n["name"] for n in spec["nodes"]}
        taps = config.get("taps", [])
        if not isinstance(taps, list) or not all(
                isinstance(t, list) and len(t) == 2 and isinstance(t[0], str) and len(t[0]) <= 200 and t[0] != "logits"
                and t[1] in names for t in taps):
            raise IntegrityError(f"{where}: taps must be [tap name, node name] pairs naming nodes of the graph")
        shp = config.get("in_features")
        if not isinstance(shp, list) or len(shp) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16 for v in shp):
            raise IntegrityError(f"{where}: in_features must be [C, H, W]")

    @property
    def fc(self) -> nn.Linear:  # type: ignore[override]
        """The classifier named at export (e.g. ``fc``, ``classifier.3``)."""
        return self.net._resolve(self.classifier_path)

    def _set_fc(self, fc: nn.Linear) -> None:
        parent_path, _, leaf = self.classifier_path.rpartition(".")
        parent = self.net.get_submodule(parent_path) if parent_path else self.net
        parent.add_module(leaf, fc)
        self.net.refresh()
        self.config["num_classes"] = fc.out_features

    def tap_names(self) -> list[str]:
        return [t for t, _ in self._taps] + ["logits"]

    def forward(self, f: Tensor, return_taps: bool = False):
        if not return_taps:
            return self.net(f)
        logits, kept = self.net.run(f, tuple(n for _, n in self._taps))
        taps = {t: kept[n] for t, n in self._taps}
        taps["logits"] = logits
        return logits, taps

    def reset_classifier(self, num_classes: int, generator: torch.Generator | None = None) -> None:
        self._set_fc(fresh_classifier(self.fc.in_features, num_classes, generator, like=self.fc))

    def expand_classes(self, num_classes: int, generator: torch.Generator | None = None) -> None:
        if num_classes <= self.fc.out_features:
            return
        self._set_fc(grown_classifier(self.fc, num_classes, generator))


# torch >= 2.1: load_state_dict(assign=True) and torch.device as a context manager (meta-device build)
_ASSIGN = "assign" in inspect.signature(torch.nn.Module.load_state_dict).parameters and hasattr(torch.device, "__enter__")

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def tensors_in_buffer(buf: bytearray) -> dict[str, Tensor]:
    """Tensors of a safetensors blob as views into ``buf`` (zero copy), with the format's checks:
    known dtypes, offsets inside the data section, sizes matching shapes, no overlaps."""
    n = int.from_bytes(buf[:8], "little")
    if len(buf) < 8 or n > len(buf) - 8:
        raise ValueError("truncated safetensors header")
    header = json.loads(bytes(buf[8:8 + n]))
    base, size = 8 + n, len(buf) - 8 - n
    out, spans = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        shape = [int(d) for d in info.get("shape", [])]
        begin, end = (int(v) for v in info["data_offsets"])
        numel = 1
        for d in shape:
            numel *= d
        if dtype is None or not (0 <= begin <= end <= size) or end - begin != numel * torch.empty(
                (), dtype=dtype).element_size() or any(d < 0 for d in shape):
            raise ValueError(f"tensor {name!r}: bad dtype, shape or offsets")
        spans.append((begin, end))
        t = torch.frombuffer(buf, dtype=dtype, count=numel, offset=base + begin) if numel else torch.empty(0, dtype=dtype)
        out[name] = t.view(shape)
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise ValueError("overlapping tensors")
    return out


def read_safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte little-endian header size, then a JSON header)."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"header of {n} bytes in a blob of {len(data)}")
    header = json.loads(data[8:8 + n])
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("__metadata__ is not a JSON object")
    return meta
