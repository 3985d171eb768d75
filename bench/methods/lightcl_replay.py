"""``lightcl-replay``, ``lightcl-replay-free``, ``remind``: the engine's learner with its feature-replay memory
(engine/replay.py) under a byte budget.

* ``lightcl-replay``: LightCL (the authors' options, TIL-sliced CE on the batch, the feature-pattern penalty)
  + int8 feature replay (``replay_budget`` 2 MiB), CE over every seen class on the replayed samples: the
  asymmetric loss of ER-ACE (Caccia et al., ICLR 2022): new classes never push old logits down on the
  batch, while replay contrasts old with new.
* ``lightcl-replay-free``: the same learner driven task-free (engine/taskfree.py): the suite's task
  boundaries are not passed on; segments, columns, vital channels and the buffer follow the labels, with a
  refresh every ``refresh_every`` steps. CE over every seen class (a batch may hold any class). It is the
  method the ``*-blurry`` scenarios run.
* ``remind``: a REMIND-style baseline (Hayes et al., ECCV 2020): the same frozen part and head, mid-level
  features compressed by product quantisation, replayed with every batch, one CE over every seen class;
  no feature-pattern penalty.
"""
from __future__ import annotations

import dataclasses

from torch import Tensor

from lightcl.engine.learner import LightCLConfig

from .lightcl import LightCLMethod

LEARNER_OPTIONS = {f.name for f in dataclasses.fields(LightCLConfig)}


class LightCLReplay(LightCLMethod):
    name = "lightcl-replay"
    cost = 0.3

    def __init__(self, ctx, **hp) -> None:
        from .configs import make_config

        full = dataclasses.asdict(make_config(self.name, hp))  # the typed defaults + what was given
        ctx_owned = {"num_classes", "seed", "device"}  # the suite's context sets these unless given
        super().__init__(ctx, **{k: v for k, v in full.items()
                                 if k in LEARNER_OPTIONS and (k not in ctx_owned or k in hp)})
        self.hp = dict(hp)

    def observe(self, x: Tensor, y: Tensor) -> dict:
        out = super().observe(x, y)
        rep = self.learner.replay
        if rep is not None and len(rep.memory):
            self.flops += 3.0 * self.f_head * rep.batch_size
        return out

    def accounting(self) -> dict:
        from lightcl.bench.accounting import bytes_as_elements, count_activations

        acc = super().accounting()
        rep = self.learner.replay
        if rep is not None:
            head = self.learner.head
            n = acc["samples_per_step"] + rep.batch_size
            acc.update(activations=count_activations(head, __import__("torch").zeros(n, *head.in_features)),
                       samples_per_step=n, replay_bytes=rep.memory.nbytes(),
                       buffer=bytes_as_elements(self.learner.memory.nbytes() + rep.memory.nbytes()))
        return acc

    def describe(self) -> dict:
        d = super().describe()
        if self.learner.replay is not None:
            d["replay"] = self.learner.replay.memory.describe()
        return d


class LightCLReplayFree(LightCLReplay):
    """Task boundaries withheld: the learner sees only (x, y) batches."""

    name = "lightcl-replay-free"
    task_free = True

    def __init__(self, ctx, **hp) -> None:
        from lightcl.engine.taskfree import TaskFree

        from .configs import make_config

        super().__init__(ctx, **hp)
        self.driver = TaskFree(self.learner, refresh_every=int(make_config(self.name, hp).refresh_every))
        self.class_index = {}
        self.tasks = {}

    def begin_task(self, task_id, classes, n_train=None) -> None:
        # only the suite's bookkeeping for TIL evaluation; nothing reaches the learner
        self.tasks[int(task_id)] = [int(c) for c in classes]
        self.current_task = int(task_id)

    def observe(self, x: Tensor, y: Tensor) -> dict:
        capture = self.learner._pending_capture
        out = self.driver.observe(x, y)
        self.steps += 1
        n = len(x)
        mem = self.learner.memory
        self.flops += self.f_frozen * n + 3.0 * self.f_head * n
        if capture or out.get("refreshed"):
            self.flops += self.f_head * (len(mem) + n)  # targets on a new buffer, taps for the masks
        if mem.active():
            self.flops += 3.0 * self.f_head * len(mem)
        rep = self.learner.replay
        if rep is not None and len(rep.memory):
            self.flops += 3.0 * self.f_head * rep.batch_size
        return out

    def end_task(self, x: Tensor | None = None) -> None:
        self.current_task = None  # no boundary reaches the learner

    def task_indices(self, task_id: int) -> list[int]:
        return [self.learner.class_index[c] for c in self.tasks[task_id] if c in self.learner.class_index]


class Remind(LightCLReplay):
    name = "remind"
