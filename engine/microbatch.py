"""Micro-batched extraction: run the frozen part over a batch in chunks sized from a memory budget.

Why: at camera resolution the update step's peak is not the head but the frozen forward's transient
activations (an ImageNet-style ResNet-18 at 224x224, batch 16: the stem's 64x112x112 output is 3.2 MB per
image, several such tensors are alive at once, and they scale with the batch). The features that leave the
frozen part are small (256x14x14 per image at layer3), so running the batch in chunks of ``k`` images bounds
the transient part by ``k`` images' worth while the result is the same tensor.

Exact only where each image's features do not depend on the rest of the batch: eval-mode BN (the export's
semantics, every backend's default). With train-mode frozen BN (``frozen_bn="train"``, the authors' drifting
statistics) a chunk would normalise with its own batch statistics and update the running statistics once per
chunk: different numbers, so it is refused (:class:`~lightcl.engine.errors.InputError`).

The per-image figure is an estimate from one image through the torch rebuild of the frozen part (forward hooks
on its leaf modules): at each leaf op, its input + its output + the input of the enclosing top-level block (a
residual block keeps it for the skip connection); the largest such sum. onnxruntime fuses conv+BN+ReLU and
reuses buffers, so its own transient is at most this (docs/results/camera.md measures both).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .errors import InputError


def _nbytes(t) -> int:
    if isinstance(t, Tensor):
        return t.numel() * t.element_size()
    if isinstance(t, (list, tuple)):
        return sum(_nbytes(v) for v in t)
    return 0


@torch.no_grad()
def activation_bytes_per_image(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Estimated transient bytes of one image through ``net`` (a chain of top-level blocks in ``net.blocks``
    or any module): max over leaf ops of input + output (+ the enclosing block's input)."""
    was = {m: m.training for m in net.modules()}  # restored module by module (train-mode BN inside eval nets)
    net.eval()
    blocks = list(getattr(net, "blocks", [])) or [net]
    block_in = [0]
    peak = [0]
    hooks = []

    def on_block(_m, args):
        block_in[0] = _nbytes(args)

    def on_leaf(_m, args, out):
        peak[0] = max(peak[0], _nbytes(args) + _nbytes(out) + block_in[0])

    try:
        for b in blocks:
            hooks.append(b.register_forward_pre_hook(on_block))
        for m in net.modules():
            if not list(m.children()):
                hooks.append(m.register_forward_hook(on_leaf))
        x = torch.zeros(1, *[int(v) for v in input_shape])
        net(x)
    finally:
        for h in hooks:
            h.remove()
        for m, flag in was.items():
            m.training = flag
    return max(int(peak[0]), 1)


def micro_batch_for_budget(per_image_bytes: int, budget_bytes: int) -> int:
    """Images per chunk so that ``chunk * per_image_bytes <= budget_bytes`` (at least one image)."""
    if per_image_bytes < 1 or budget_bytes < 1:
        raise InputError(f"a memory budget and a per-image size must be positive (got {budget_bytes}, "
                         f"{per_image_bytes} bytes)")
    return max(1, int(budget_bytes // per_image_bytes))


def check_micro_batch(value: Optional[int], batch_statistics: bool) -> Optional[int]:
    """``None`` (whole batches) or a positive int; refused where chunks would change the numbers."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"micro_batch must be a positive integer or None, got {value!r}")
    if batch_statistics:
        raise InputError("micro_batch with frozen_bn='train' would normalise each chunk with its own batch "
                         "statistics (different features, and the running statistics would drift once per chunk): "
                         "use frozen_bn='eval' or no micro-batching")
    return value


def chunks(n: int, size: Optional[int]) -> list:
    """``[(start, stop), ...]`` covering ``range(n)`` in pieces of at most ``size`` (one piece when None)."""
    if not size or size >= n:
        return [(0, n)]
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def n_chunks(n: int, size: Optional[int]) -> int:
    return 1 if not size or size >= n else math.ceil(n / size)


__all__ = ["activation_bytes_per_image", "micro_batch_for_budget", "check_micro_batch", "chunks", "n_chunks"]
