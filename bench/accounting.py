"""Theoretical training memory by the paper's accounting: fp32 weights + gradients + optimizer state
+ activations of one batch (32, + the replayed buffer), in MiB.

Activations are the outputs of every leaf module (conv, BN, ReLU, linear, pooling) that the backward
pass needs: those of the trainable part, plus those of the frozen part only when the frozen part
sits *above* trainable layers (never, for LightCL's split).
"""
from __future__ import annotations

import torch
from torch import nn

from lightcl.engine.footprint import count_activations  # noqa: F401  (re-exported: bench's callers use it)

MIB = 2.0 ** 20


def theoretical_mib(weights: int, trainable: int, activations: int, optimizer_slots: int = 0) -> float:
    """All counts in elements; fp32 (4 bytes). optimizer_slots = extra state tensors per trainable weight."""
    return 4 * (weights + trainable * (1 + optimizer_slots) + activations) / MIB


# --------------------------------------------------------------------------- measured, for the ledger
class SavedTensorMeter:
    """Bytes autograd saves for backward during a ``with`` block (``saved_tensors_hooks``): every
    distinct storage packed, parameters excluded (they are weights, counted as such)."""

    def __init__(self, exclude: "list[torch.Tensor] | tuple" = ()) -> None:
        self._exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self._seen: dict[int, int] = {}
        self._ctx = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in self._exclude and ptr not in self._seen:
                self._seen[ptr] = st.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, meta)
            pass
        return t

    def __enter__(self) -> "SavedTensorMeter":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self._seen.values())


class GradientMeter:
    """The most gradient bytes alive at once during backward, from post-accumulate-grad hooks: at each
    parameter's accumulation, the gradients still held plus this one (an optimizer hook that ran
    first and dropped it still had it a moment ago). With a plain step the last call sees them all.

    ``carried`` (with ``forward_of``, the module the step runs forward): the most gradient bytes held as a
    forward of that module starts, i.e. kept from the previous step into this step's forward (a loop that
    zeroes them after the forward, not before it); they sit beside the forward's activations at the peak,
    and no backward hook sees them."""

    def __init__(self, params, forward_of: "nn.Module | None" = None) -> None:
        self.params = list(params)
        self.peak = 0
        self.carried = 0
        self._handles = [p.register_post_accumulate_grad_hook(self._probe) for p in self.params]
        if forward_of is not None:
            self._handles.append(forward_of.register_forward_pre_hook(self._at_forward))

    def _alive(self) -> int:
        return sum(q.grad.numel() * q.grad.element_size() for q in self.params if q.grad is not None)

    def _at_forward(self, _module, _args) -> None:
        self.carried = max(self.carried, self._alive())

    def _probe(self, p: torch.Tensor) -> None:
        alive = self._alive()
        if p.grad is None:
            alive += p.numel() * p.element_size()
        self.peak = max(self.peak, alive)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
