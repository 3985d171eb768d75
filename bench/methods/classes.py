"""The one class map every benchmark method goes through: labels <-> output columns, in order of arrival.

A method never builds a label table of its own: :class:`~lightcl.bench.methods.base.Method` maps every batch
through ``self.classes``. Standalone methods get a :class:`ClassMap` (the engine learner's rule: a class's
column is its rank of first appearance; a label lookup is a dict lookup, so class ids like 2**40 allocate
nothing); methods built on the engine's learner use *its* map through :class:`LearnerClasses`, so there is
no second copy to drift.

This is the one place to change when the learner's map moves to ``lightcl.engine.classmap`` (issue 20):
``ClassMap`` becomes that class and ``LearnerClasses`` a view of the learner's instance.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torch import Tensor

from lightcl.engine.errors import InputError


def _labels(y) -> list:
    return y.tolist() if isinstance(y, Tensor) else list(y)


class ClassMap:
    """Columns in order of first appearance, tasks and their classes, at most ``capacity`` classes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.column: dict[Hashable, int] = {}
        self.tasks: dict[int, list] = {}

    def open(self, task_id: int, classes: Sequence) -> None:
        """Register ``task_id``'s classes (new ones get the next columns)."""
        for c in classes:
            if c not in self.column:
                if len(self.column) >= self.capacity:
                    raise InputError(f"more than {self.capacity} classes")
                self.column[c] = len(self.column)
        self.tasks[int(task_id)] = list(classes)

    def index(self, y) -> Tensor:
        """Column of each label of ``y`` (tensor or sequence), on the CPU; InputError for a label no task announced."""
        labels = _labels(y)
        unknown = sorted({c for c in labels if c not in self.column}, key=repr)
        if unknown:
            raise InputError(f"labels {unknown[:10]} belong to no announced task")
        return torch.tensor([self.column[c] for c in labels], dtype=torch.long)

    def task_columns(self, task_id: int) -> list[int]:
        return [self.column[c] for c in self.tasks[task_id]]

    def seen_columns(self) -> list[int]:
        return sorted(self.column.values())

    def n_tasks(self) -> int:
        return len(self.tasks)


class LearnerClasses:
    """The engine learner's own map, seen through the :class:`ClassMap` interface. ``open`` does nothing: the
    learner registers a task's classes in its ``begin_task`` (which the method's ``on_begin_task`` calls) and
    checks them there itself."""

    def __init__(self, learner) -> None:
        self.learner = learner

    def open(self, task_id: int, classes: Sequence) -> None:
        pass

    def index(self, y) -> Tensor:
        return self.learner.label_index(y.long().cpu() if isinstance(y, Tensor) else y).cpu()

    def task_columns(self, task_id: int) -> list[int]:
        return self.learner.task_columns(task_id)

    def seen_columns(self) -> list[int]:
        return self.learner.seen_columns()

    def n_tasks(self) -> int:
        return len(self.learner.tasks)
