"""Theoretical training memory by the paper's accounting: fp32 weights + gradients + optimizer state
+ activations of one batch (32, + the replayed buffer), in MiB.

Activations are the outputs of every leaf module (conv, BN, ReLU, linear, pooling) that the backward
pass needs: those of the trainable part, plus those of the frozen part only when the frozen part
sits *above* trainable layers (never, for LightCL's split).
"""
from __future__ import annotations

import torch
from torch import nn

MIB = 2.0 ** 20


def count_activations(module: nn.Module, x: torch.Tensor) -> int:
    """Elements output by leaf modules during one forward of ``x``."""
    total = 0
    hooks = []

    def hook(_m, _inp, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    for m in module.modules():
        if len(list(m.children())) == 0:
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            was = module.training
            module.eval()
            module(x)
            module.train(was)
    finally:
        for h in hooks:
            h.remove()
    return total


def theoretical_mib(weights: int, trainable: int, activations: int, optimizer_slots: int = 0) -> float:
    """All counts in elements; fp32 (4 bytes). optimizer_slots = extra state tensors per trainable weight."""
    return 4 * (weights + trainable * (1 + optimizer_slots) + activations) / MIB
