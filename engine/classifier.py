"""The fresh classifier continual learning starts from: one rule for the engine and every baseline.

The authors replace the pretrained classifier with a new ``nn.Linear`` with xavier-uniform weights
and a zero bias (github INV-WZQ/LightCL, LightCL.py @62fda8b); drawing the weights from a caller's
generator makes every method's start reproducible.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


def xavier_rows_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``weight`` [out, in] in place with xavier-uniform values drawn from ``generator``."""
    out_f, in_f = weight.shape
    bound = (6.0 / (in_f + out_f)) ** 0.5 if in_f + out_f else 0.0
    with torch.no_grad():
        if generator is not None and generator.device != weight.device:
            # a CPU generator for a CUDA weight: draw on the generator's device, then copy (same numbers everywhere)
            weight.copy_(torch.empty(weight.shape, dtype=weight.dtype, device=generator.device)
                         .uniform_(-bound, bound, generator=generator))
        else:
            weight.uniform_(-bound, bound, generator=generator)
    return weight


def fresh_classifier(in_features: int, num_classes: int, generator: torch.Generator | None = None,
                     like: nn.Linear | None = None) -> nn.Linear:
    """A new ``nn.Linear(in_features, num_classes)``: xavier weights, zero bias, on ``like``'s device/dtype."""
    with warnings.catch_warnings():  # an expandable classifier starts with 0 outputs
        warnings.simplefilter("ignore", UserWarning)
        fc = nn.Linear(int(in_features), int(num_classes))
    if like is not None:
        fc = fc.to(like.weight.device, like.weight.dtype)
    xavier_rows_(fc.weight, generator)
    with torch.no_grad():
        fc.bias.zero_()
    return fc


def grown_classifier(old: nn.Linear, num_classes: int, generator: torch.Generator | None = None) -> nn.Linear:
    """``old`` grown to ``num_classes`` outputs: learned rows kept, new rows fresh (xavier over the new size)."""
    new = fresh_classifier(old.in_features, num_classes, generator, like=old)
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
    return new
