"""SGD applied per parameter as soon as its gradient is ready, so no full set of gradients is ever held.

``loss.backward()`` normally leaves a gradient for every trainable parameter, and only then does
``optimizer.step()`` read them all: the peak holds weights + all gradients + activations. With
``register_post_accumulate_grad_hook`` (torch >= 2.1) each parameter is updated the moment autograd
has accumulated its gradient, and the gradient is dropped right after; the peak holds at most the
gradients autograd is still producing (PyTorch's "optimizer step in backward" recipe,
pytorch.org/tutorials/intermediate/optimizer_step_in_backward_tutorial.html).

The update is the one ``torch.optim.SGD`` computes (``momentum``, ``dampening``, ``weight_decay``,
``nesterov``, same order of operations), so results match the plain step; tests/test_optim_step.py
checks it bit for bit. It is safe inside backward because a parameter's accumulate node runs only
after every node that uses the parameter has produced its gradient (and read its saved value).

Usage is the same three lines as a plain optimizer (``zero_grad``; ``backward``; ``step``): ``step``
is a no-op for parameters already updated during backward, and updates any parameter whose
gradient was set by hand (so it is also correct when hooks did not fire).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import torch
from torch import Tensor


class PerParameterSGD:
    """``torch.optim.SGD``'s update, applied in a post-accumulate-grad hook of each parameter.

    Exposes ``param_groups`` and ``state`` (``state[p]["momentum_buffer"]``) like a torch optimizer,
    so code that saves/restores momentum buffers keeps working. ``remove()`` detaches the hooks.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr > 0, momentum >= 0, weight_decay >= 0 required (got {lr}, {momentum}, {weight_decay})")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires a momentum and zero dampening")
        self.params = [p for p in params if p.requires_grad]
        self.param_groups: list[dict[str, Any]] = [{"params": self.params, "lr": float(lr), "momentum": float(momentum),
                                                    "dampening": float(dampening),
                                                    "weight_decay": float(weight_decay), "nesterov": bool(nesterov)}]
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.applied_in_backward = 0  # parameters updated by the hooks since the last zero_grad/step
        # torch < 2.1 (the device floor: torch 1.13 on Jetson images) has no post-accumulate-grad hook: then
        # every update happens in step(), exactly as the plain optimizer (no saving, same numbers).
        self.in_backward = hasattr(torch.Tensor, "register_post_accumulate_grad_hook")
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self.params] if self.in_backward else []

    # -- the update, exactly torch.optim.SGD's single-tensor path
    @torch.no_grad()
    def _update(self, p: Tensor) -> None:
        g = self.param_groups[0]
        d_p = p.grad
        if g["weight_decay"] != 0:
            d_p = d_p.add(p, alpha=g["weight_decay"])
        if g["momentum"] != 0:
            st = self.state[p]
            buf = st.get("momentum_buffer")
            if buf is None:
                buf = torch.clone(d_p).detach()
                st["momentum_buffer"] = buf
            else:
                buf.mul_(g["momentum"]).add_(d_p, alpha=1 - g["dampening"])
            d_p = d_p.add(buf, alpha=g["momentum"]) if g["nesterov"] else buf
        p.add_(d_p, alpha=-g["lr"])

    def _hook(self, p: Tensor) -> None:
        if p.grad is None:
            return
        self._update(p)
        p.grad = None  # the point: this gradient is gone before the next one is produced
        self.applied_in_backward += 1

    # -- the torch.optim.Optimizer surface the learner uses
    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()
        self.applied_in_backward = 0

    def step(self) -> None:
        """Updates only parameters that still hold a gradient (set outside backward); the rest were
        updated during backward."""
        for p in self.params:
            if p.grad is not None:
                self._update(p)
                p.grad = None
        self.applied_in_backward = 0

    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.param_groups[0]["lr"] = float(value)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __del__(self) -> None:  # hooks hold a bound method: do not keep updating a discarded optimizer's params
        try:
            self.remove()
        except Exception:
            pass


__all__ = ["PerParameterSGD"]
