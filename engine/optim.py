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

    Exposes ``param_groups``, ``state`` (``state[p]["momentum_buffer"]``), ``state_dict()`` and
    ``load_state_dict()`` like a torch optimizer; the state dict is ``torch.optim.SGD``'s, key for key, so
    either optimizer loads the other's (tests/test_optim_step.py). ``remove()`` detaches the hooks.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr > 0, momentum >= 0, weight_decay >= 0 required (got {lr}, {momentum}, {weight_decay})")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires a momentum and zero dampening")
        self.params = [p for p in params if p.requires_grad]
        self.defaults: dict[str, Any] = {"lr": lr, "momentum": momentum, "dampening": dampening,
                                         "weight_decay": weight_decay, "nesterov": bool(nesterov), "maximize": False,
                                         "foreach": None, "differentiable": False, "fused": None}
        self.param_groups: list[dict[str, Any]] = [{**self.defaults, "params": self.params}]
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

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict()``'s format: parameters by index, tensors by reference."""
        index = {id(p): i for i, p in enumerate(self.params)}
        state = {index[id(p)]: dict(st) for p, st in self.state.items() if id(p) in index and st}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this optimizer or of ``torch.optim.SGD`` over the same parameters (copied, cast to
        each parameter's device and dtype). Raises ValueError on a state dict that does not fit."""
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict):
            raise ValueError("PerParameterSGD takes a state dict with exactly one parameter group")
        saved = dict(groups[0])
        ids = saved.pop("params", None)
        if not isinstance(ids, list) or len(ids) != len(self.params):
            raise ValueError(f"the state dict's parameter group has {len(ids) if isinstance(ids, list) else '?'} "
                             f"parameters, this optimizer {len(self.params)}")
        if saved.get("maximize", False) or saved.get("differentiable", False):
            raise ValueError("PerParameterSGD does not implement maximize or differentiable")
        by_id = dict(zip(ids, self.params))
        state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        for k, st in dict(state_dict.get("state", {})).items():
            if k not in by_id or not isinstance(st, dict):
                raise ValueError(f"the state dict holds state for an unknown parameter {k!r}")
            p = by_id[k]
            for name, v in st.items():
                if name != "momentum_buffer" or not isinstance(v, Tensor) or v.shape != p.shape:
                    raise ValueError(f"parameter {k}: {name!r} is not an SGD momentum buffer of shape {list(p.shape)}")
                state[p][name] = v.detach().to(device=p.device, dtype=p.dtype).clone()
        group = self.param_groups[0]
        for key in self.defaults:
            if key in saved:
                group[key] = saved[key]
        self.state = state

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
