"""The learner's class map: class names (str or int) <-> class ids <-> logit columns, and which task
announced which classes.

Why one class: the learner, the state, ``predict`` and the stream loop all translate labels; kept in one
place the rules cannot drift apart.

- A class is named by a ``str`` (``"cup"``) or by an ``int`` (``3``); one learner uses one kind, and mixing
  them is refused with one line (``"3"`` and ``3`` are different classes nobody wants to tell apart).
- Inside the engine every class has an integer *id*: an int class's id is the int itself (so states and
  buffers from before names existed read unchanged); a str class's id is its logit column.
- Columns are given in order of first appearance and never move. A class that comes back in a later task
  keeps its column (it is trained further, never duplicated).
- ``backbone``: with ``reset_classifier=False`` the first K columns are the backbone's own classes (the
  export's ``class_names``; without them ``"0".."K-1"``, or the ints ``0..K-1`` when the lessons use int
  classes). They belong to no task until a lesson names them.
"""
from __future__ import annotations

import operator
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .errors import InputError, IntegrityError, ShapeError, UnknownClassError, UnknownTaskError

KINDS = ("int", "str")
MAX_NAME = 200  # characters of one class name
INT_RANGE = (0, (1 << 63) - 1)


def _kind_of(name: Any) -> str:
    if isinstance(name, str):
        return "str"
    if isinstance(name, bool) or isinstance(name, (float, complex)):
        raise InputError(f"class {name!r} is a {type(name).__name__}: a class is named by a str or an int")
    try:
        operator.index(name)
    except TypeError:
        raise InputError(f"class {str(name)[:40]!r} ({type(name).__name__}) is neither a str nor an int") from None
    return "int"


class ClassMap:
    """Names <-> ids <-> columns, and the tasks' classes (ids, in the order each task announced them)."""

    def __init__(self, backbone: int | Sequence[str] = 0) -> None:
        self.kind: str | None = None
        self.index: dict[int, int] = {}  # id -> column
        self.tasks: dict[int, list[int]] = {}  # task -> ids
        self._names: list[str] = []  # str kind: name per column
        self._by_name: dict[str, int] = {}
        self.backbone = 0
        self._implicit = False  # backbone classes without names: their kind follows the first lesson
        if isinstance(backbone, int):
            if backbone:
                self.backbone, self._implicit = backbone, True
                self.index = {i: i for i in range(backbone)}
        else:
            names = list(backbone)
            if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
                raise InputError("the backbone's class_names must be distinct non-empty strings")
            self.backbone = len(names)
            self._fix("str")
            for n in names:
                self._add_str(n)

    # ---------------------------------------------------------------- kind
    def _fix(self, kind: str) -> None:
        if self.kind is None:
            self.kind = kind
            if self._implicit and kind == "str":  # the backbone's unnamed classes become "0".."K-1"
                self._names = [str(i) for i in range(self.backbone)]
                self._by_name = {n: i for i, n in enumerate(self._names)}
            self._implicit = False
        elif kind != self.kind:
            raise InputError(f"this learner names its classes with {self.kind}s; got a {kind} class "
                             f"(one learner uses one kind: str names like 'cup', or ints)")

    def _add_str(self, name: str) -> int:
        col = len(self.index)
        self.index[col] = col
        self._names.append(name)
        self._by_name[name] = col
        return col

    # ---------------------------------------------------------------- names <-> ids
    def check_names(self, classes: Sequence[Any]) -> list:
        """``classes`` of a task as a list of distinct names of one kind (not yet added)."""
        if isinstance(classes, (str, bytes)) or isinstance(classes, Tensor) and classes.dim() == 0:
            raise InputError(f"classes must be a sequence of class names, got {str(classes)[:60]!r}")
        if isinstance(classes, Tensor):
            classes = self._tensor_values(classes, "classes")
        try:
            classes = list(classes)
        except TypeError:
            raise InputError(f"classes must be a sequence of class names, got {type(classes).__name__}") from None
        if not classes:
            raise InputError("a task needs at least one class")
        kinds = {_kind_of(c) for c in classes}
        if len(kinds) > 1:
            raise InputError(f"classes mix str and int names ({classes[:6]}): use one kind")
        kind = kinds.pop()
        if kind == "int":
            classes = [operator.index(c) for c in classes]
            if min(classes) < INT_RANGE[0] or max(classes) > INT_RANGE[1]:
                raise InputError(f"int classes must be non-negative 64-bit integers, got {classes[:10]}")
        else:
            bad = [c for c in classes if not c.strip() or len(c) > MAX_NAME or not c.isprintable()]
            if bad:
                raise InputError(f"class names must be printable, non-blank and at most {MAX_NAME} characters: "
                                 f"{[b[:40] for b in bad[:3]]}")
        if len(set(classes)) != len(classes):
            raise InputError(f"classes must be distinct, got {classes}")
        if self.kind is not None and kind != self.kind:
            self._fix(kind)  # raises the one-line mixing error
        return classes

    def ids_for_new_task(self, classes: list) -> tuple[list[int], list]:
        """(ids of ``classes``, names not seen before) without changing the map."""
        kind = "str" if isinstance(classes[0], str) else "int"
        if kind == "int":
            return list(classes), [c for c in classes if c not in self.index]
        if self.kind is None and self._implicit:
            known = {str(i): i for i in range(self.backbone)}
        else:
            known = self._by_name
        ids, new, nxt = [], [], len(self.index)
        for c in classes:
            if c in known:
                ids.append(known[c])
            else:
                ids.append(nxt)
                new.append(c)
                nxt += 1
        return ids, new

    def add_task(self, task_id: int, classes: list) -> list[int]:
        """Record ``task_id`` with ``classes`` (checked names); new classes get the next columns. Returns ids."""
        kind = "str" if isinstance(classes[0], str) else "int"
        self._fix(kind)
        ids = []
        for c in classes:
            if kind == "int":
                if c not in self.index:
                    self.index[c] = len(self.index)
                ids.append(c)
            else:
                ids.append(self._by_name[c] if c in self._by_name else self._add_str(c))
        self.tasks[task_id] = ids
        return ids

    def ids(self, y, n: int | None = None, what: str = "labels") -> Tensor:
        """Class ids (int64 tensor) of labels ``y``: a list/tuple of names, or an int tensor/array of int
        names. Float, complex and bool labels are refused (never cast); a name no task announced is an
        :class:`UnknownClassError`."""
        if isinstance(y, Tensor):
            values = None
            if y.dim() != 1:
                raise ShapeError(f"{what} must be a 1-D tensor (one value per image), got shape {list(y.shape)}")
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise ShapeError(f"{what} must be class names (ints or strs), got dtype {y.dtype} (never cast)")
            if self.kind == "str":
                raise InputError(f"this learner's classes are named by strs ({self._names[:3]}...): pass {what} "
                                 "as a list of names, not an int tensor")
            out = y.long()
        else:
            if hasattr(y, "dtype") and hasattr(y, "tolist") and not isinstance(y, (list, tuple)):  # numpy
                dt = str(y.dtype)
                if dt.startswith(("float", "complex", "bool")):
                    raise InputError(f"{what} must be class names (ints or strs), got {dt} values (never cast)")
                y = y.tolist()
            if isinstance(y, (str, bytes)):
                raise InputError(f"{what} must be a sequence of class names, got a single string")
            try:
                values = list(y)
            except TypeError:
                raise ShapeError(f"{what} must be a 1-D sequence of class names (one per image) or an int tensor, "
                                 f"got {type(y).__name__}") from None
            kinds = {_kind_of(v) for v in values}
            if len(kinds) > 1:
                raise InputError(f"{what} mix str and int names: use one kind")
            kind = kinds.pop() if kinds else self.kind
            if self.kind is not None and kind is not None and kind != self.kind:
                self._fix(kind)  # the one-line mixing error
            if kind == "str":
                unknown = sorted({v for v in values if v not in self._by_name})
                if unknown:
                    raise UnknownClassError(f"{what} {[u[:40] for u in unknown[:10]]} name no class this learner "
                                            f"knows ({len(self._names)} known)")
                out = torch.tensor([self._by_name[v] for v in values], dtype=torch.long)
            else:
                ints = [operator.index(v) for v in values]
                if ints and (min(ints) < INT_RANGE[0] or max(ints) > INT_RANGE[1]):
                    raise UnknownClassError(f"{what} {ints[:10]} hold classes outside 0..2**63-1")
                out = torch.tensor(ints, dtype=torch.long)
        if n is not None and out.shape[0] != n:
            raise ShapeError(f"{what} must hold {n} values (one per image), got {out.shape[0]}")
        return out

    def outside(self, y, n: int, names: list) -> list:
        """Labels of ``y`` (``n`` of them) that are not among ``names`` (a task's checked classes), without
        changing the map: ``begin_task`` checks its buffer batch before the task's new classes exist."""
        if isinstance(y, Tensor):
            if y.dim() != 1:
                raise ShapeError(f"labels must be a 1-D tensor of {n} values, got shape {list(y.shape)}")
            values = self._tensor_values(y, "labels")
        else:
            if hasattr(y, "dtype") and hasattr(y, "tolist") and not isinstance(y, (list, tuple)):
                if str(y.dtype).startswith(("float", "complex", "bool")):
                    raise InputError(f"labels must be class names (ints or strs), got {y.dtype} values (never cast)")
                y = y.tolist()
            if isinstance(y, (str, bytes)):
                raise InputError("labels must be a sequence of class names, got a single string")
            try:
                values = list(y)
            except TypeError:
                raise ShapeError(f"labels must be a 1-D sequence of class names (one per image) or an int tensor, "
                                 f"got {type(y).__name__}") from None
            for v in values:
                _kind_of(v)
        if len(values) != n:
            raise ShapeError(f"labels must hold {n} values (one per image), got {len(values)}")
        allowed = set(names)
        return sorted({v for v in values if v not in allowed}, key=str)

    @staticmethod
    def _tensor_values(t: Tensor, what: str) -> list:
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ShapeError(f"{what} must be class names (ints or strs), got dtype {t.dtype} (never cast)")
        return t.reshape(-1).tolist()

    # ---------------------------------------------------------------- ids <-> columns
    def columns(self, ids: Iterable[int]) -> Tensor:
        """Logit column of each class id; UnknownClassError for an id no task announced."""
        labels = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        unknown = sorted({c for c in labels if c not in self.index})
        if unknown:
            raise UnknownClassError(f"labels {[self.name(c) if c in self.index else c for c in unknown[:10]]} "
                                    "belong to no announced task")
        # a dict lookup, not a table indexed by class id: ids like 2**40 must not allocate 8 TB
        return torch.tensor([self.index[c] for c in labels], dtype=torch.long)

    def ids_of_columns(self, cols: Tensor) -> Tensor:
        items = list(self.index.items())  # one snapshot (a reader may run beside a task opening)
        inv = torch.empty(max(i for _, i in items) + 1, dtype=torch.long)
        for c, i in items:
            inv[i] = c
        return inv[cols.cpu()]

    def name(self, class_id: int):
        """The name of a class id: its str name, or the int itself."""
        if self.kind == "str":
            return self._names[self.index[class_id]]
        return int(class_id)

    def names(self) -> list:
        """Every known class's name, in column order (unnamed backbone classes: ``"0".."K-1"``)."""
        if self.kind == "str":
            return list(self._names)
        if self.kind is None and self._implicit:
            return [str(i) for i in range(self.backbone)]
        inv = sorted(self.index, key=self.index.__getitem__)
        return [int(c) for c in inv]

    def seen_columns(self) -> list[int]:
        return sorted(self.index.values())

    def task_columns(self, task_id: int) -> list[int]:
        if task_id not in self.tasks:
            raise UnknownTaskError(f"unknown task id {task_id}; known tasks: {sorted(self.tasks)}")
        return [self.index[c] for c in self.tasks[task_id]]

    def task_of(self) -> dict[int, int]:
        """class id -> the latest task that names it (a class may come back in a later lesson)."""
        return {c: t for t, cs in self.tasks.items() for c in cs}

    def __len__(self) -> int:
        return len(self.index)

    # ---------------------------------------------------------------- state
    def state_entry(self) -> dict[str, Any]:
        """The JSON ``class_map`` entry of a learner state (``tasks`` and ``class_index`` are saved beside it)."""
        return {"kind": self.kind, "names": list(self._names) if self.kind == "str" else None,
                "backbone": self.backbone, "implicit": self._implicit}

    @classmethod
    def from_state(cls, entry: Mapping[str, Any] | None, tasks: dict[int, list[int]], index: dict[int, int],
                   where: str) -> "ClassMap":
        """The map of a state; ``entry`` None (states before names): int classes, no backbone classes."""
        m = cls()
        m.tasks, m.index = tasks, index
        if entry is None:
            m.kind = "int" if index else None
            if set(index) != {c for cs in tasks.values() for c in cs}:
                raise IntegrityError(f"{where}: the tasks' classes and class_index disagree")
            return m
        if not isinstance(entry, Mapping) or set(entry) != {"kind", "names", "backbone", "implicit"}:
            raise IntegrityError(f"{where}: class_map must be {{kind, names, backbone, implicit}}")
        kind, names, backbone, implicit = entry["kind"], entry["names"], entry["backbone"], entry["implicit"]
        if kind not in (None, *KINDS) or not isinstance(implicit, bool) or isinstance(backbone, bool) \
                or not isinstance(backbone, int) or not 0 <= backbone <= len(index):
            raise IntegrityError(f"{where}: class_map kind/backbone/implicit malformed")
        if (kind is None) != (not index or implicit) or (implicit and kind is not None):
            raise IntegrityError(f"{where}: class_map kind {kind!r} does not fit its classes")
        m.kind, m.backbone, m._implicit = kind, backbone, implicit
        if kind == "str":
            if not isinstance(names, list) or len(names) != len(index) or \
                    any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
                raise IntegrityError(f"{where}: class_map names must be one distinct str per class")
            if any(index.get(i) != i for i in range(len(index))):
                raise IntegrityError(f"{where}: a str class's id must be its column")
            m._names, m._by_name = list(names), {n: i for i, n in enumerate(names)}
        elif names is not None:
            raise IntegrityError(f"{where}: class_map names are only kept for str classes")
        in_tasks = {c for cs in tasks.values() for c in cs}
        if not in_tasks <= set(index) or any(index[c] >= backbone for c in set(index) - in_tasks):
            raise IntegrityError(f"{where}: the tasks' classes and class_index disagree")
        return m


def backbone_classes(head: Any, extractor: Any, capacity: int | None, generator: torch.Generator) -> ClassMap:
    """``reset_classifier=False``: the head's classifier keeps the backbone's classes, named by the export's
    ``class_names`` (absent: ``"0".."K-1"``, or the ints ``0..K-1`` if the lessons use ints). A fixed
    ``capacity`` above the backbone's K grows the classifier now (``generator`` draws the new rows)."""
    k = head.num_classes
    names = (getattr(extractor, "meta", None) or {}).get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != k):
        raise InputError(f"the export's class_names name {len(names) if isinstance(names, list) else '?'} "
                         f"classes, its classifier has {k} outputs")
    if capacity is not None and capacity < k:
        raise InputError(f"num_classes={capacity} is less than the backbone's {k} classes kept by "
                         "reset_classifier=False (use num_classes=None: the classifier grows)")
    if capacity is not None and capacity > k:
        head.expand_classes(capacity, generator=generator)
    return ClassMap(names if names is not None else k)
