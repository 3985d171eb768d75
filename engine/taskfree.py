"""Task-free learning: a LightCL learner fed a stream with no task boundaries ("blurry": classes appear and
reappear in any order).

Why: a robot is never told when a task starts or ends. This driver keeps the learner's task API as it is
and decides the boundaries itself: a batch holding a class never seen closes the open segment (vital
channels from its last batch, as ``end_task``) and opens a new one for the new classes (the classifier's
columns grow, the feature-pattern buffer is captured again from the next batch, as ``begin_task``);
without new classes the masks and the buffer are refreshed every ``refresh_every`` steps. Every batch
may hold any seen class, so the cross-entropy must run over every seen class (``loss_slice="all"``);
the replay memory (``replay_budget``) needs no boundary at all. Segments are recorded as the learner's
tasks (ids 0, 1, ...), so the state saves and loads like any other.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import InputError
from .state_check import bump

COUNTER = "taskfree_since_refresh"


class TaskFree:
    """``TaskFree(learner, refresh_every=100).observe(x, y)``: one step on any batch of labelled samples."""

    def __init__(self, learner: Any, refresh_every: int = 100) -> None:
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
            raise InputError(f"refresh_every must be a positive integer, got {refresh_every!r}")
        if learner.config.loss_slice != "all":
            raise InputError("task-free learning needs loss_slice='all' (a batch may hold any seen class)")
        self.learner = learner
        self.refresh_every = int(refresh_every)
        learner.label_scope = "seen"
        learner.counters.setdefault(COUNTER, 0)

    def _next_segment(self) -> int:
        return max(self.learner.tasks, default=-1) + 1

    def observe(self, x: Tensor, y) -> dict:
        """One update step; new classes open a new segment first, and every ``refresh_every`` steps without
        new classes the vital channels and the buffer are refreshed."""
        lr = self.learner
        labels = y.tolist() if isinstance(y, Tensor) else list(y)
        if isinstance(y, Tensor) and (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
            raise InputError(f"labels must be class names (str) or integer classes, got a {y.dtype} tensor")
        # the batch's distinct classes, checked like a task's (str or int, never mixed); new ones in label order
        _, new = lr.classes.ids_for_new_task(lr.classes.check_names(sorted(set(labels), key=str)))
        refreshed = False
        if new:
            if lr.current_task is not None:  # vital channels from the segment's last full batch (or this one)
                lr.end_task(None if lr._last_features is not None else x)
            lr.begin_task(self._next_segment(), new)
            lr.counters[COUNTER] = 0
            refreshed = True
        elif lr.current_task is None:  # a learner whose last segment was closed (e.g. task API, then stream)
            raise InputError("no open segment and no new class: call begin_task or feed a batch with a new class")
        elif lr.counters[COUNTER] >= self.refresh_every:
            self.refresh()
            refreshed = True
        out = lr.observe(x, y)
        if not out.get("skipped"):
            bump(lr.counters, COUNTER)
        out["refreshed"] = int(refreshed)
        return out

    @torch.no_grad()
    def refresh(self) -> None:
        """Vital channels from the last full batch (OR-ed into the masks) and a new feature-pattern buffer,
        captured from the next batch (or its targets re-recorded, with the reservoir policy)."""
        lr = self.learner
        with lr._lock:
            if lr._last_features is not None:
                _, taps = lr._taps(lr._last_features)
                lr.memory.update_masks(taps)
            if lr.config.buffer_size > 0 and lr.memory.masks:
                if lr.config.buffer_policy == "new-task-first-batch":
                    lr._pending_capture = True
                elif len(lr.memory):
                    _, taps = lr._taps(lr._buffer_features())
                    lr.memory.record_targets(taps)
            lr.counters[COUNTER] = 0
