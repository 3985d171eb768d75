"""The reference extractor: the frozen part as an eager PyTorch module, rebuilt from ``frozen.safetensors``.

Needs nothing beyond torch and safetensors (no onnxruntime, no exporter code). Runs on any torch
device. ``frozen_bn="train"`` reproduces the authors' code, where the frozen layers stay in
``model.train()`` so their BN layers normalise with batch statistics and their running statistics
drift with every batch; the parameters stay frozen either way. The default ``"eval"`` matches the
ONNX export exactly (eval-mode BN, folded).

Exercised on CPU here; on CUDA it is plain torch (``.to(device)``), not separately tested.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError, IntegrityError
from ..export_dir import export_file
from ..frozen import load_frozen
from .base import BaseExtractor


class TorchExtractor(BaseExtractor):
    backend = "torch"
    OPTIONS = frozenset({"frozen_bn", "threads"})

    def __init__(self, export_dir: str | Path, meta: dict[str, Any], device: torch.device,
                 frozen_bn: str = "eval", threads: int | None = None) -> None:
        super().__init__(export_dir, meta, device)
        if frozen_bn not in ("eval", "train"):
            raise InputError(f"frozen_bn must be 'eval' or 'train', got {frozen_bn!r}")
        if threads:
            # torch's intra-op pool is process-wide: this affects every torch op in the process.
            torch.set_num_threads(int(threads))
        self.frozen_bn = frozen_bn
        t0 = time.perf_counter()
        path = export_file(export_dir, meta, "frozen.safetensors")
        self.net, fmeta = load_frozen(path, map_location=self.device)
        bound = fmeta.get("onnx_sha256")  # format 2: the frozen.onnx these weights were exported with
        onnx_sha = meta.get("files", {}).get("frozen.onnx")
        if bound is not None and bound != onnx_sha:
            raise IntegrityError(f"{path} belongs to frozen part {str(bound)[:12]}..., this export's frozen.onnx is "
                                 f"{str(onnx_sha)[:12]}...: the directory mixes two exports")
        if list(fmeta.get("feature_shape", self.feature_shape)) != list(self.feature_shape):
            raise IntegrityError(f"{path}: feature shape {fmeta.get('feature_shape')} differs from meta.json "
                                 f"{list(self.feature_shape)}")
        self.net.set_bn_mode(frozen_bn)
        self.session_create_ms = (time.perf_counter() - t0) * 1e3

    @property
    def module(self) -> torch.nn.Module:
        """The underlying ``FrozenNet`` (parameters frozen)."""
        return self.net

    def __call__(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = x.to(self.device, non_blocking=True)
        # no_grad, not inference_mode: the features feed the trainable head, and inference tensors
        # cannot be saved for its backward pass.
        with torch.no_grad():
            return self.net(x)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "provider": f"torch {torch.__version__} eager", "threads": torch.get_num_threads(),
                "frozen_bn": self.frozen_bn, "file": "frozen.safetensors"}
