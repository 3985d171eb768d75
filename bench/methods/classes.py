"""The one class map every benchmark method goes through: labels <-> output columns, in order of arrival.

A method never builds a label table of its own: :class:`~lightcl.bench.methods.base.Method` maps every batch
through ``self.classes``. Standalone methods get a :class:`ClassMap`: the engine learner's own class
(:class:`lightcl.engine.classmap.ClassMap`: str or int classes, never mixed; a class's column is its rank of first
appearance; a label lookup is a dict lookup, so class ids like 2**40 allocate nothing) with the method's
capacity; methods built on the engine's learner use *its* map through :class:`LearnerClasses`, so there is no
second copy to drift.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from lightcl.engine.classmap import ClassMap as EngineClassMap
from lightcl.engine.errors import InputError


class ClassMap:
    """The engine's class map with at most ``capacity`` classes (the method's fixed classifier)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.map = EngineClassMap()

    @property
    def tasks(self) -> dict[int, list]:
        """task -> its classes' ids (for int classes the ints themselves)."""
        return self.map.tasks

    def open(self, task_id: int, classes: Sequence) -> None:
        """Register ``task_id``'s classes (new ones get the next columns); checked before anything changes."""
        names = self.map.check_names(classes)
        _ids, new = self.map.ids_for_new_task(names)
        if len(self.map) + len(new) > self.capacity:
            raise InputError(f"more than {self.capacity} classes")
        self.map.add_task(int(task_id), names)

    def index(self, y) -> Tensor:
        """Column of each label of ``y`` (tensor or sequence), on the CPU; UnknownClassError (an InputError) for a
        label no task announced."""
        return self.map.columns(self.map.ids(y))

    def task_columns(self, task_id: int) -> list[int]:
        return self.map.task_columns(task_id)

    def seen_columns(self) -> list[int]:
        return self.map.seen_columns()

    def n_tasks(self) -> int:
        return len(self.map.tasks)


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
