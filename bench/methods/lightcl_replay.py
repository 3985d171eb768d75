"""``lightcl-replay``, ``lightcl-replay-free``: the engine's learner with its feature-replay memory
(engine/replay.py) under a byte budget.

* ``lightcl-replay``: LightCL (the authors' options, the feature-pattern penalty) + feature replay
  (``replay_budget`` 2 MiB), CE over every seen class on the replayed samples. By default int8 codes and
  the TIL-sliced CE on the batch (the asymmetric loss of ER-ACE, Caccia et al., ICLR 2022); the ``offline``
  entries use PQ codes, one CE over every seen class and ``replay_steps`` extra replay updates per batch
  (bench/configs/lightcl-replay.json, docs/tuning.md). Those extra updates count as trained head samples.
* ``lightcl-replay-free``: the same learner driven task-free (engine/taskfree.py): the suite's task
  boundaries are not passed on; segments, columns, vital channels and the buffer follow the labels, with a
  refresh every ``refresh_every`` steps. CE over every seen class (a batch may hold any class). It is the
  method the ``*-blurry`` scenarios run.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import Tensor

from lightcl.engine.learner import LightCLConfig

from .base import Batch, Step, register_method
from .configs import LightCLReplayConfig, LightCLReplayFreeConfig
from .lightcl import LightCLMethod

LEARNER_OPTIONS = {f.name for f in dataclasses.fields(LightCLConfig)}


@register_method
class LightCLReplay(LightCLMethod):
    name = "lightcl-replay"
    summary = "LightCL + compressed feature replay under a byte budget"
    config_class = LightCLReplayConfig
    cost = 0.3

    def __init__(self, ctx, **hp) -> None:
        full = dataclasses.asdict(self.config_class(**hp))  # the typed defaults + what was given
        ctx_owned = {"num_classes", "seed", "device"}  # the suite's context sets these unless given
        super().__init__(ctx, **{k: v for k, v in full.items()
                                 if k in LEARNER_OPTIONS and (k not in ctx_owned or k in hp)})
        self.hp = dict(hp)

    def _replayed(self) -> int:
        rep = self.learner.replay
        return rep.batch_size if rep is not None and len(rep.memory) else 0

    @staticmethod
    def _replay_trained(replayed: int, metrics: dict) -> int:
        """Replayed samples the head trained on in one step: the step's replay batch and, with ``replay_steps``,
        one more batch per extra update."""
        return replayed * (1 + int(metrics.get("replay_updates", 0))) if replayed else 0

    def train_step(self, batch: Batch) -> Step:
        replayed = self._replayed()  # what the step replays: the memory before this batch is stored
        step = super().train_step(batch)
        step.trained["head"] = step.trained.get("head", 0) + self._replay_trained(replayed, step.metrics)
        return step

    def accounting(self) -> dict:
        from lightcl.bench.accounting import bytes_as_elements, count_activations

        acc = super().accounting()
        rep = self.learner.replay
        if rep is not None:
            head = self.learner.head
            n = acc["samples_per_step"] + rep.batch_size
            acc.update(activations=count_activations(head, torch.zeros(n, *head.in_features)),
                       samples_per_step=n, replay_bytes=rep.memory.nbytes(),
                       buffer=bytes_as_elements(self.learner.memory.nbytes() + rep.memory.nbytes()))
        return acc

    def describe(self) -> dict:
        d = super().describe()
        if self.learner.replay is not None:
            d["replay"] = self.learner.replay.memory.describe()
        return d


class _SuiteTasks:
    """The class view of a task-free method: the suite's tasks are kept only to evaluate TIL; the learner's own
    map (filled by the task-free driver as labels arrive) gives the columns. A label the learner has not met yet
    maps to -1 (training ignores the columns: the driver takes the labels as given)."""

    def __init__(self, learner) -> None:
        self.learner, self.tasks = learner, {}

    def open(self, task_id: int, classes: Sequence) -> list:
        self.tasks[int(task_id)] = list(classes)
        return list(classes)

    def index(self, y) -> Tensor:
        ci = self.learner.class_index
        vals = y.tolist() if isinstance(y, Tensor) else list(y)
        return torch.tensor([ci.get(v, -1) for v in vals], dtype=torch.long)

    def task_columns(self, task_id: int) -> list[int]:
        ci = self.learner.class_index
        return [ci[c] for c in self.tasks[task_id] if c in ci]

    def seen_columns(self) -> list[int]:
        return self.learner.seen_columns()

    def n_tasks(self) -> int:
        return len(self.tasks)


@register_method
class LightCLReplayFree(LightCLReplay):
    """Task boundaries withheld: the learner sees only (x, y) batches."""

    name = "lightcl-replay-free"
    summary = "LightCL + feature replay, task-free (blurry streams)"
    config_class = LightCLReplayFreeConfig
    task_free = True
    wants_fresh_batch = False

    def __init__(self, ctx, **hp) -> None:
        from lightcl.engine.taskfree import TaskFree

        super().__init__(ctx, **hp)
        self.driver = TaskFree(self.learner, refresh_every=int(self.config_class(**hp).refresh_every))
        self.classes = _SuiteTasks(self.learner)

    def on_begin_task(self, task_id, classes, n_train) -> None:
        return None  # only the suite's bookkeeping for TIL evaluation; nothing reaches the learner

    def train_step(self, batch: Batch) -> Step:
        capture = self.learner.pending_capture
        replayed = self._replayed()
        out = self.driver.observe(batch.x, batch.labels)
        n, m = len(batch.x), len(self.learner.memory)
        head = n + self._replay_trained(replayed, out) + (m if self.learner.memory.active() else 0)
        forwarded = m + n if capture or out.get("refreshed") else 0  # targets on a new buffer, taps for the masks
        return Step(out, trained={"head": head}, forwarded={"frozen": n, "head": forwarded})

    def on_end_task(self, x: Tensor | None) -> None:
        return None  # no boundary reaches the learner

