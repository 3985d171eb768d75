"""How many elements a forward pass produces: the device side sizes its batches with it (``lightcl predict``)
and the benchmark's theoretical memory counts activations with it (``lightcl.bench.accounting``)."""
from __future__ import annotations

import torch
from torch import nn


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
