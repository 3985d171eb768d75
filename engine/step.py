"""One update step of the LightCL learner, and what only the step needs: the loss components, the optimizer,
the head's taps and the frozen features in the authors' order.

Why a module of its own: the step is where the numbers are made (extraction order, BN statistics, the
buffer capture, the loss, the optimizer update, the rollback of a non-finite batch); the learner
(engine/learner.py) only checks the caller's input, opens and closes tasks and predicts. The step's
inputs travel as one :class:`StepInput` instead of nine positional arguments.

Functions take the learner as their first argument (``lrn``) and read or set its fields; nothing here is
public API. Python 3.8-compatible (device side).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from .errors import InputError, NonFiniteError, ShapeError
from .head import Head
from .losses import FeaturePattern, LossComponent, LossContext, SlicedCrossEntropy, total_loss
from .state_check import bump

RESERVED_STEP_KEYS = ("loss", "skipped", "step_ms", "replay_updates")
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class StepInput:
    """What one update step works on, gathered (and checked finite) by :func:`gather` before the step.

    ``captured``: the buffer's own features when it is captured from this batch with train-mode frozen BN;
    ``buffer_feats``: the buffer's features for this step's pass when they must be extracted again (train-mode
    frozen BN), else None (the stored ones are used); ``saved_frozen``: the frozen part's statistics before
    this batch, restored if the loss is not finite.
    """

    x: Tensor
    y: Tensor
    feats: Tensor
    task: int
    capture: bool
    use_buffer: bool
    saved_frozen: dict
    captured: Tensor | None = None
    buffer_feats: Tensor | None = None


def make_components(config: Any, head_in_features: tuple, extra: Sequence[LossComponent]) -> list[LossComponent]:
    """The default terms (cross-entropy on the step's columns, the feature-pattern penalty) + ``extra``."""
    if isinstance(extra, LossComponent) or not isinstance(extra, (list, tuple)):
        raise InputError("loss_components must be a list of LossComponent")
    comps: list[LossComponent] = [SlicedCrossEntropy(), FeaturePattern(config.beta)]
    if config.replay_budget is not None:
        from .replay import make_replay

        c = config
        comps.append(make_replay(c.replay_budget, c.replay_codec, head_in_features, c.replay_batch,
                                 c.replay_weight, c.seed + 1, c.replay_pq_subvectors))
    for c in extra:
        if not isinstance(c, LossComponent):
            raise InputError(f"loss_components takes LossComponent instances, got {type(c).__name__}")
        comps.append(c)
    names = [c.name for c in comps]
    clash = sorted({n for n in names if names.count(n) > 1 or n in RESERVED_STEP_KEYS})
    if clash:
        raise InputError(f"loss component names must be distinct and not {list(RESERVED_STEP_KEYS)}: {clash}")
    return comps


def make_optimizer(config: Any, factory: OptimizerFactory | None, head: Head,
                   old: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    """A new optimizer over ``head``'s parameters: ``factory``'s, else the configured SGD step. ``old``: the
    optimizer it replaces after classifier growth (its hooks removed; surviving parameters keep their state)."""
    if old is not None and hasattr(old, "remove"):
        old.remove()  # PerParameterSGD: its hooks sit on the parameters that survive; never update them twice
    if factory is not None:
        opt = factory(head.parameters())
        if not isinstance(opt, torch.optim.Optimizer):
            raise InputError(f"the optimizer factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
    elif config.optimizer_step == "per-parameter":
        from .optim import PerParameterSGD

        opt = PerParameterSGD(head.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(head.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
    if old is not None:  # classifier growth: surviving parameters keep their state and group settings
        for p in head.parameters():
            if p in old.state:
                opt.state[p] = old.state[p]
        if len(old.param_groups) == len(opt.param_groups):
            for g_new, g_old in zip(opt.param_groups, old.param_groups):
                g_new.update({k: v for k, v in g_old.items() if k != "params"})
    return opt


@torch.no_grad()
def train_taps(head: Head, features: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Head taps in train mode (as the authors record them), no graph."""
    head.train()
    return head(features, return_taps=True)


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Every floating tensor free of NaN/Inf (a check only: reads, never changes a value).

    Fast path: one sum per tensor, one host sync for all (NaN/Inf always make a sum NaN/Inf, and a sum reads
    each value once, where ``isfinite(t).all()`` reads twice and allocates); only when a sum is not finite,
    which huge finite values can also cause, is each tensor checked element by element."""
    ts = [t for t in tensors if t.is_floating_point()]
    if not ts:
        return True
    dev = ts[0].device  # (an optimizer may keep scalar state on the CPU beside CUDA weights: Adam's step)
    if bool(torch.isfinite(torch.stack([t.detach().sum().float().to(dev) for t in ts])).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in ts)


def optimizer_tensors(opt: Any) -> list[Tensor]:
    """The optimizer's state tensors (momentum buffers, ...): what ``save`` writes next to the weights."""
    return [v for st in opt.state.values() for v in st.values() if isinstance(v, Tensor)]


@torch.no_grad()
def checked_train_taps(head: Head, features: Tensor, keep: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`train_taps`, refused with :class:`NonFiniteError` (the head's BN statistics restored) when the
    pass leaves them NaN/Inf: finite but extreme features (``1e18``) overflow ``running_var``, a state that
    ``load`` refuses. ``keep=False``: a probe, the statistics restored in any case."""
    saved, was = [b.detach().clone() for b in head.buffers()], head.training
    out = train_taps(head, features)
    ok = all_finite(head.buffers())
    if not ok or not keep:
        for b, v in zip(head.buffers(), saved):
            b.copy_(v)
        head.train(was)
    if not ok:
        raise NonFiniteError("these features overflow the head's BN statistics into NaN/Inf (values far out of "
                             "range?): refusing to use them")
    return out


def buffer_features(lrn: Any) -> Tensor:
    """Frozen features of the buffer. With batch-dependent features (train-mode frozen BN) the buffer
    images go through the frozen part on their own, as in the authors' code; else the stored features."""
    if lrn._batch_statistics and lrn.memory.images is not None:
        return lrn.extract(lrn.memory.images)
    return lrn.memory.features


def given_features(lrn: Any, features: Tensor, x: Tensor) -> Tensor:
    """Features the caller extracted for ``x`` (``observe(x, y, features)``), checked and moved to the device."""
    if lrn._batch_statistics:
        raise InputError("features given to observe() with frozen_bn='train': the step extracts the buffer and "
                         "the batch itself, in the authors' order; pass images only")
    if not isinstance(features, Tensor) or features.dim() != 4 or features.shape[0] != x.shape[0] \
            or tuple(features.shape[1:]) != tuple(lrn.head.in_features):
        got = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ShapeError(f"features {got} do not fit this batch and head: want [{x.shape[0]}, "
                         f"{', '.join(map(str, lrn.head.in_features))}]")
    return features.detach().to(lrn.device, torch.float32)


def observe_batch(lrn: Any, x: Tensor, y: Tensor, features: Tensor | None) -> dict[str, float]:
    """``observe``'s work once its input is checked: the frozen features in the authors' order, then the step
    under the learner's lock; a batch whose features are not finite is skipped (counted, nothing changed)."""
    t0 = time.perf_counter()
    task = lrn.current_task
    with lrn._frozen_guard():
        saved_frozen = lrn.frozen_statistics()
        capture = lrn._pending_capture
        n_buf = min(lrn.config.buffer_size, x.shape[0])
        use_buffer = any(c.uses_buffer() for c in lrn.loss_components) and (capture or lrn.memory.active())
        captured = buffer_feats = None
        if lrn._batch_statistics:  # the buffer alone: targets' pass (capture), then this step's pass
            if capture:
                captured = lrn.extract(x[:n_buf])
            if use_buffer:
                buffer_feats = lrn.extract(x[:n_buf]) if capture else buffer_features(lrn)
        feats = lrn.extract(x) if features is None else features
        if not all(bool(torch.isfinite(f).all()) for f in (captured, buffer_feats, feats) if f is not None):
            # Finite but extreme pixels can overflow the frozen part. Such a batch must not reach the
            # buffer, the BN statistics or the masks: skip it like a non-finite loss.
            lrn._restore_frozen(saved_frozen)
            with lrn._lock:
                bump(lrn.counters, "skipped_nonfinite")
            out = {"loss": float("nan"), **{c.name: float("nan") for c in lrn.loss_components}, "skipped": 1,
                   "step_ms": (time.perf_counter() - t0) * 1000.0}
            out["feature_pattern"] = 0.0
            return out
        step = StepInput(x=x, y=y, feats=feats, task=task, capture=capture, use_buffer=use_buffer,
                         saved_frozen=saved_frozen, captured=captured, buffer_feats=buffer_feats)
        with lrn._lock:
            out = run_step(lrn, step)
    out["step_ms"] = (time.perf_counter() - t0) * 1000.0
    return out


def _roll_back(lrn: Any, s: StepInput, saved_bn: list, saved_memory: Any, was_training: bool) -> None:
    """Undo what a step did before its update: the head's and the frozen part's BN statistics (and the head's
    mode), the capture."""
    with torch.no_grad():
        for b, saved in zip(lrn.head.buffers(), saved_bn):
            b.copy_(saved)
    lrn.head.train(was_training)
    lrn._restore_frozen(s.saved_frozen)
    if saved_memory is not None:  # the capture happens again on the next good batch
        lrn.memory.restore(saved_memory)
        lrn._pending_capture = True
    bump(lrn.counters, "skipped_nonfinite")


def run_step(lrn: Any, s: StepInput) -> dict[str, float]:
    """The update (caller holds the learner's lock): capture the buffer if pending, buffer then batch through
    the head, the weighted loss, backward and the optimizer step.

    A batch is skipped (``skipped: 1``, ``counters["skipped_nonfinite"]``, the head's and the frozen part's BN
    statistics and the capture rolled back, no weight or optimizer state touched) when the loss is not finite,
    when the passes left the head's BN statistics NaN/Inf (finite but extreme features: ``1e18`` overflows
    ``running_var`` while the loss stays finite), or, with an optimizer that updates in ``step()``, when a
    gradient is not finite. These are checks only: a good step computes exactly what it did without them.
    Weights or optimizer state that are not finite after the update (which the checks above leave to the
    update's own arithmetic overflowing, or to a non-finite gradient met by the per-parameter step while it
    updates) cannot be rolled back without a copy of the weights every step: that raises
    :class:`NonFiniteError`, and ``save`` refuses to write such a head."""
    saved_bn, was_training = [b.detach().clone() for b in lrn.head.buffers()], lrn.head.training
    saved_memory = None
    if s.capture:
        saved_memory = lrn.memory.snapshot()
        images = s.x if lrn._batch_statistics else None
        lrn.memory.set_buffer(s.feats if s.captured is None else s.captured, s.y, s.task, images=images)
        _, taps = train_taps(lrn.head, lrn.memory.features)
        lrn.memory.record_targets(taps)
        lrn._pending_capture = False
    lrn.head.train()
    buffer_taps = None
    if s.use_buffer and lrn.memory.active():  # buffer first, as the authors
        _, buffer_taps = lrn.head(lrn.memory.features if s.buffer_feats is None else s.buffer_feats,
                                  return_taps=True)
    logits = lrn.head(s.feats)
    seen = lrn.seen_columns()  # once per step: the loss slice and the replay component both use it
    columns = lrn.task_columns(s.task) if lrn.config.loss_slice == "task" else seen
    context = LossContext(logits=logits, target_index=lrn.classes.columns(s.y).to(s.y.device), columns=columns,
                          labels=s.y, features=s.feats, task=s.task, memory=lrn.memory, buffer_taps=buffer_taps,
                          head=lrn.head, seen_columns=seen)
    # separable terms (the feature replay) are backwarded after the batch's: their activations and the batch's
    # are never alive together. Not with the per-parameter step, which updates inside each backward.
    apart = [c for c in lrn.loss_components if c.separable] if lrn.config.optimizer_step != "per-parameter" else []
    loss, values = total_loss([c for c in lrn.loss_components if c not in apart], context)
    out = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in values.items()}, "skipped": 0}
    if not torch.isfinite(loss) or not all_finite(lrn.head.buffers()):
        _roll_back(lrn, s, saved_bn, saved_memory, was_training)
        out["skipped"] = 1
        return out
    lrn.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    del loss
    for c in apart:
        term, values = total_loss([c], context)
        out[c.name] = float(values[c.name].detach())
        out["loss"] += float(term.detach())
        if not torch.isfinite(term) or not all_finite(lrn.head.buffers()):
            lrn.optimizer.zero_grad(set_to_none=True)
            _roll_back(lrn, s, saved_bn, saved_memory, was_training)
            out["skipped"] = 1
            return out
        if term.requires_grad:  # an empty memory's term is a constant 0
            term.backward()
    grads = [p.grad for p in lrn.head.parameters() if p.grad is not None]  # none left by the per-parameter step
    if not all_finite(grads):  # nothing updated yet: the optimizer's step() has not run
        lrn.optimizer.zero_grad(set_to_none=True)
        _roll_back(lrn, s, saved_bn, saved_memory, was_training)
        out["skipped"] = 1
        return out
    del grads
    lrn.optimizer.step()
    if not all_finite(lrn.head.parameters()) or not all_finite(optimizer_tensors(lrn.optimizer)):
        raise NonFiniteError("the update step overflowed the head's weights or optimizer state into NaN/Inf (input "
                             "values far out of range?); the learner in memory cannot be used or saved: load "
                             "the last saved state")
    bump(lrn.counters, "steps")
    if lrn.config.replay_budget is not None and lrn.config.replay_steps:
        out["replay_updates"] = float(replay_updates(lrn, context, lrn.config.replay_steps))
    for c in lrn.loss_components:
        c.after_step(context)
    if lrn.config.buffer_policy == "reservoir" and lrn.config.buffer_size > 0:
        lrn.memory.reservoir_add(s.feats, s.y, s.task, lrn.generator, images=s.x if lrn._batch_statistics else None)
    if lrn._last_features is None or s.feats.shape[0] >= lrn._last_features.shape[0]:
        lrn._last_features = s.feats  # a trailing remainder never replaces a full batch
    return out


def replay_updates(lrn: Any, context: LossContext, steps: int) -> int:
    """``replay_steps``: after the batch's update (and before the batch enters the memory), ``steps`` more
    updates of the head on freshly drawn replayed samples alone, the replay term as weighted in the loss.

    Why: one update per batch learns little from the memory; REMIND (Hayes et al., ECCV 2020) takes one
    update per new sample. Each update holds one replay batch's activations, as the batch's own replay term
    does, so the peak does not grow. An update whose loss, BN statistics or gradients are not finite is not
    applied (its BN statistics restored, ``counters["skipped_replay_updates"]``) and ends the extra updates
    of this batch; the batch's own update stays. Returns the updates applied."""
    rep = lrn.replay
    if rep is None or rep.weight == 0:
        return 0
    done = 0
    for _ in range(steps):
        if not len(rep.memory):
            break
        saved_bn = [b.detach().clone() for b in lrn.head.buffers()]
        lrn.optimizer.zero_grad(set_to_none=True)
        term = rep(context)
        term = term if rep.weight == 1.0 else rep.weight * term
        ok = bool(torch.isfinite(term)) and all_finite(lrn.head.buffers())
        if ok:
            term.backward()
            ok = all_finite([p.grad for p in lrn.head.parameters() if p.grad is not None])
        del term
        if not ok:  # nothing applied (the per-parameter step cannot see a non-finite loss: it never backwards one)
            lrn.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, saved in zip(lrn.head.buffers(), saved_bn):
                    b.copy_(saved)
            bump(lrn.counters, "skipped_replay_updates")
            break
        lrn.optimizer.step()
        if not all_finite(lrn.head.parameters()) or not all_finite(optimizer_tensors(lrn.optimizer)):
            raise NonFiniteError("a replay update overflowed the head's weights or optimizer state into NaN/Inf; "
                                 "the learner in memory cannot be used or saved: load the last saved state")
        done += 1
    bump(lrn.counters, "replay_updates", done)
    return done
