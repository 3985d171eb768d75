"""Loss rules shared by the learner, the reference loop and every baseline, and the learner's loss
as a list of weighted components."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError


def sliced_cross_entropy(logits: Tensor, target_index: Tensor, columns: Sequence[int] | Tensor) -> Tensor:
    """Cross-entropy over ``logits[:, columns]`` only (TIL-style slicing: a task's or the seen classes).

    ``target_index`` holds column indices into the full ``logits``; each must be one of ``columns``.
    This is the authors' ``F.cross_entropy(out[:, classes], y - offset)`` for any column set.
    """
    cols = torch.as_tensor(columns, dtype=torch.long, device=logits.device)
    pos = torch.full((logits.shape[1],), -1, dtype=torch.long, device=logits.device)
    pos[cols] = torch.arange(len(cols), device=logits.device)
    local = pos[target_index.to(logits.device)]
    if bool((local < 0).any()):
        raise ValueError("sliced_cross_entropy: a target is outside the kept columns")
    return F.cross_entropy(logits[:, cols], local)


@dataclass
class LossContext:
    """What one learning step knows when its loss is built (every tensor on the learner's device).

    ``buffer_taps`` are the head's taps on the buffer, present only when the step ran the buffer pass
    (``None`` otherwise: task 0, an empty buffer, no component that uses the buffer).
    """

    logits: Tensor
    target_index: Tensor
    columns: list[int]
    labels: Tensor
    features: Tensor
    task: int
    memory: Any
    buffer_taps: dict[str, Tensor] | None = None
    head: Any = None  # the trainable head (train mode): components that run other samples through it
    seen_columns: list[int] | None = None  # logit columns of every class seen so far


class LossComponent:
    """One term of the learner's loss: ``loss = sum(component.weight * component(context))``.

    After Renate's ``WeightedLossComponent`` (github awslabs/Renate,
    src/renate/updaters/learner_components/losses.py at 0399ecd): a loss is a list of weighted
    components the learner sums. Unlike Renate, a component returns its *unweighted* value and the
    learner applies ``weight``, so each value is reported as computed (``observe()`` returns it under
    ``name``). ``needs_buffer``: the component reads ``context.buffer_taps``. ``separable``: the component
    runs its own samples through the head and reads nothing of the batch's graph, so the step may backward it
    on its own after the batch's backward: its activations and the batch's are then never alive together
    (the same gradient, summed in another order; engine/step.py).
    """

    name: str = "component"
    needs_buffer: bool = False
    separable: bool = False

    def __init__(self, weight: float = 1.0, name: str | None = None) -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise InputError(f"a loss component's weight must be a finite number >= 0, got {weight!r}")
        self.weight = float(weight)
        if name is not None:
            self.name = str(name)

    def __call__(self, context: LossContext) -> Tensor:
        raise NotImplementedError

    def uses_buffer(self) -> bool:
        """Whether the step must run the buffer through the head for this component."""
        return self.needs_buffer and self.weight > 0

    def after_step(self, context: LossContext) -> None:
        """Called once the step's update is applied (never for a skipped step): e.g. store the batch."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight})"


class SlicedCrossEntropy(LossComponent):
    """Cross-entropy on the step's logit columns (the task's, or every seen class's)."""

    name = "ce"

    def __call__(self, context: LossContext) -> Tensor:
        return sliced_cross_entropy(context.logits, context.target_index, context.columns)


class FeaturePattern(LossComponent):
    """LightCL's Memorize-Feature-Patterns penalty: ``beta`` x masked squared drift of the buffer's taps."""

    name = "feature_pattern"
    needs_buffer = True

    def __init__(self, beta: float, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.beta = float(beta)

    def uses_buffer(self) -> bool:
        return super().uses_buffer() and self.beta > 0

    def __call__(self, context: LossContext) -> Tensor:
        if context.buffer_taps is None:
            return torch.zeros((), device=context.logits.device)
        return context.memory.penalty(context.buffer_taps, self.beta)


def total_loss(components: Sequence[LossComponent], context: LossContext) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum(weight x value)`` in the components' order, and each unweighted value by name (the empty sum: 0).

    A weight of exactly 1 adds the value itself (the same autograd graph, so the same bits as a plain
    ``ce + fp``); a weight of 0 still evaluates the component, so it is reported.
    """
    values: dict[str, Tensor] = {}
    total: Tensor | None = None
    for c in components:
        v = c(context)
        values[c.name] = v
        term = v if c.weight == 1.0 else c.weight * v
        total = term if total is None else total + term
    if total is None:
        total = torch.zeros((), device=context.logits.device)
    return total, values
