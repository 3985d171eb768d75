"""The one class map every benchmark method goes through: the engine's (:mod:`lightcl.engine.classmap`).

A method never builds a label table of its own: :class:`~lightcl.bench.methods.base.Method` maps every batch
through ``self.classes``. Standalone methods get a :class:`MethodClasses` (the engine's ``ClassMap``: columns
in order of first appearance, str or int class names, dict lookups, so class ids like 2**40 allocate
nothing, plus the suite's capacity); methods built on the engine's learner use *its* map through
:class:`LearnerClasses`, so there is no second copy to drift.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from lightcl.engine.classmap import ClassMap
from lightcl.engine.errors import InputError


class MethodClasses:
    """The engine's class map, bounded by the method's ``capacity`` outputs."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.map = ClassMap()

    def open(self, task_id: int, classes: Sequence) -> list:
        """Register ``task_id``'s classes (new ones get the next columns); returns them as checked names."""
        names = self.map.check_names(classes)
        _, new = self.map.ids_for_new_task(names)
        if len(self.map) + len(new) > self.capacity:
            raise InputError(f"more than {self.capacity} classes")
        self.map.add_task(int(task_id), names)
        return names

    def index(self, y) -> Tensor:
        """Column of each label of ``y`` (names: a list, or an int tensor), on the CPU; an error for a label
        no task announced."""
        return self.map.columns(self.map.ids(y))

    def task_columns(self, task_id: int) -> list[int]:
        return self.map.task_columns(task_id)

    def seen_columns(self) -> list[int]:
        return self.map.seen_columns()

    def n_tasks(self) -> int:
        return len(self.map.tasks)


class LearnerClasses:
    """The engine learner's own map, seen through the :class:`MethodClasses` interface. ``open`` registers
    nothing: the learner does that in its ``begin_task`` (which the method's ``on_begin_task`` calls) and
    checks the classes there itself."""

    def __init__(self, learner) -> None:
        self.learner = learner

    def open(self, task_id: int, classes: Sequence) -> list:
        return list(classes)

    def index(self, y) -> Tensor:
        return self.learner.label_index(y.long().cpu() if isinstance(y, Tensor) else y).cpu()

    def task_columns(self, task_id: int) -> list[int]:
        return self.learner.task_columns(task_id)

    def seen_columns(self) -> list[int]:
        return self.learner.seen_columns()

    def n_tasks(self) -> int:
        return len(self.learner.tasks)
