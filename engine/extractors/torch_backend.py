"""The reference extractor: the frozen part as an eager PyTorch module, rebuilt from ``frozen.safetensors``.

Needs nothing beyond torch and safetensors (no onnxruntime, no exporter code). Runs on any torch
device. ``frozen_bn="train"`` reproduces the authors' code, where the frozen layers stay in
``model.train()`` so their BN layers normalise with batch statistics and their running statistics
drift with every batch; the parameters stay frozen either way. The default ``"eval"`` matches the
ONNX export exactly (eval-mode BN, folded).

``frozen_bn="train"`` applies to *learning* only. The authors predict with ``model.eval()``, so
prediction runs inside :meth:`TorchExtractor.eval_statistics` (fixed, drifted running statistics;
nothing moves). The drifted statistics are part of what was learned: :meth:`statistics` and
:meth:`load_statistics` let a learner state save and restore them.

Exercised on CPU here; on CUDA it is plain torch (``.to(device)``), not separately tested.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from ..errors import IntegrityError
from ..export_dir import export_file
from ..frozen import load_frozen
from .base import BackendOptions, BaseExtractor, check_choice, check_thread_option


@dataclasses.dataclass(frozen=True)
class TorchOptions(BackendOptions):
    """``frozen_bn``: "eval" (fixed statistics, matches the ONNX export) or "train" (the authors' drifting
    BN; only this backend can do it); ``threads``: torch intra-op threads (process-wide; None = torch's)."""

    frozen_bn: str = "eval"
    threads: Optional[int] = None

    def validate(self) -> None:
        check_choice("frozen_bn", self.frozen_bn, ("eval", "train"))
        check_thread_option("threads", self.threads)

    def exclusive(self) -> str | None:
        return "frozen_bn='train' needs torch" if self.frozen_bn == "train" else None


class TorchExtractor(BaseExtractor):
    name = "torch"
    summary = "frozen.safetensors rebuilt as eager PyTorch; the reference, and the only one with frozen_bn='train'"
    Options = TorchOptions
    auto_rank = {}  # not ranked: load_extractor's fallback when nothing else works

    def _open(self, options: TorchOptions) -> None:
        if options.threads:
            # torch's intra-op pool is process-wide: this affects every torch op in the process.
            torch.set_num_threads(int(options.threads))
        self.frozen_bn = options.frozen_bn
        self.file = "frozen.safetensors"
        path = export_file(self.export_dir, self.meta, self.file)
        self.net, fmeta = load_frozen(path, map_location=self.device)
        bound = fmeta.get("onnx_sha256")  # format 2: the frozen.onnx these weights were exported with
        onnx_sha = self.meta.get("files", {}).get("frozen.onnx")
        if bound is not None and bound != onnx_sha:
            raise IntegrityError(f"{path} belongs to frozen part {str(bound)[:12]}..., this export's frozen.onnx is "
                                 f"{str(onnx_sha)[:12]}...: the directory mixes two exports")
        if list(fmeta.get("feature_shape", self.feature_shape)) != list(self.feature_shape):
            raise IntegrityError(f"{path}: feature shape {fmeta.get('feature_shape')} differs from meta.json "
                                 f"{list(self.feature_shape)}")
        self.net.set_bn_mode(self.frozen_bn)
        # one mode at a time: a prediction in eval_statistics() must not switch BN under a learning step
        self._mode_lock = threading.RLock()

    def _close(self) -> None:
        """The rebuilt frozen module's weights are the only thing held."""
        self.net = None

    def _guard(self):
        # eval mode never switches: no lock, concurrent calls stay concurrent
        return self._mode_lock if self.frozen_bn == "train" else contextlib.nullcontext()

    def _run(self, x: Tensor) -> Tensor:
        # no_grad, not inference_mode: the features feed the trainable head, and inference tensors
        # cannot be saved for its backward pass.
        with torch.no_grad():
            return self.net(x)

    def activation_bytes_per_image(self) -> int:
        """The estimate from this backend's own module (no second copy of the weights)."""
        if self._per_image_bytes is None:
            from ..microbatch import activation_bytes_per_image

            with self._guard():
                mode = self.frozen_bn
                self.net.set_bn_mode("eval")  # the probe image must not move train-mode statistics
                try:
                    self._per_image_bytes = activation_bytes_per_image(self.net, self.input_shape)
                finally:
                    self.net.set_bn_mode(mode)
        return self._per_image_bytes

    @property
    def module(self) -> torch.nn.Module:
        """The underlying ``FrozenNet`` (parameters frozen)."""
        return self.net

    @property
    def batch_statistics(self) -> bool:
        """True when features depend on the batch they are computed with (train-mode frozen BN): a
        learner must then extract the buffer images on their own, never take rows of a larger batch."""
        return self.frozen_bn == "train"

    @contextlib.contextmanager
    def eval_statistics(self) -> Iterator["TorchExtractor"]:
        """Inside the block the frozen BN uses its running statistics and updates nothing, whatever
        ``frozen_bn`` says: prediction, as the authors' ``model.eval()``. Thread-safe: calls from other
        threads wait until the block ends, so they never see the wrong mode."""
        if self.frozen_bn == "eval":
            yield self
            return
        with self._mode_lock:
            self.net.set_bn_mode("eval")
            try:
                yield self
            finally:
                self.net.set_bn_mode(self.frozen_bn)

    def statistics(self) -> dict[str, Tensor]:
        """Copies of the frozen BN buffers (running mean/var, batch count), keyed by module path."""
        with self._mode_lock:
            return {k: v.detach().clone() for k, v in self.net.named_buffers()}

    def load_statistics(self, stats: dict[str, Tensor]) -> None:
        """Restore :meth:`statistics` (a state saved with drifted statistics, or a skipped step)."""
        with self._mode_lock:
            own = dict(self.net.named_buffers())
            if set(stats) != set(own):
                missing, extra = sorted(set(own) - set(stats)), sorted(set(stats) - set(own))
                raise IntegrityError(f"frozen BN statistics do not match the frozen part (missing {missing[:3]}, "
                                     f"unexpected {extra[:3]})")
            for k, v in stats.items():
                if tuple(v.shape) != tuple(own[k].shape):
                    raise IntegrityError(f"frozen BN statistic {k} has shape {list(v.shape)}, the frozen part "
                                         f"{list(own[k].shape)}")
            with torch.no_grad():
                for k, v in stats.items():
                    own[k].copy_(v.to(own[k].device, own[k].dtype))

    def info(self) -> dict[str, Any]:
        return {**super().info(), "provider": f"torch {torch.__version__} eager", "threads": torch.get_num_threads(),
                "frozen_bn": self.frozen_bn, "file": self.file}
