"""The LightCL learner: a frozen extractor + a trainable head kept from forgetting by the
feature-pattern memory.

Mammoth-style contract: ``begin_task`` / ``observe`` (one batch at a time, so a robot can feed frames
as they arrive) / ``end_task``; ``predict`` and ``evaluate`` for inference. The loss is a list of
weighted components (engine/losses.py, after Renate's learner components): cross-entropy on the task's
logit slice and the feature-pattern penalty by default, plus any the caller adds. Defaults reproduce the
authors' code; every departure is a named option (engine/config.py). ``state_dict()``/``load_state_dict()``
hold the whole training state; engine/state.py only writes it to and reads it from a directory.

This module is the public face: it checks the caller's input, opens and closes tasks and predicts. The
update step itself is engine/step.py; the class map engine/classmap.py; building, checking and installing
a state dict engine/learner_state.py (cross-field checks: engine/state_check.py).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import fields
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .allocator import apply_lean_malloc
from .classmap import ClassMap, backbone_classes
from .config import BUFFER_POLICIES, LOSS_SLICES, OPTIMIZER_STEPS, LightCLConfig
from .errors import InputError, LightCLError, NonFiniteError, ShapeError, UnknownClassError
from .head import Head
from .learner_state import build_state, check_frozen_bn, load_into
from .losses import LossComponent
from .memory import FeaturePatternMemory
from .metrics import count_correct
from .step import (RESERVED_STEP_KEYS, OptimizerFactory, buffer_features, checked_train_taps, given_features,
                   make_components, make_optimizer, observe_batch, train_taps)
from .validate import check_images, check_labels, check_learner_args

__all__ = ["LightCL", "LightCLConfig", "BUFFER_POLICIES", "LOSS_SLICES", "OPTIMIZER_STEPS", "RESERVED_STEP_KEYS",
           "OptimizerFactory"]


class LightCL:
    """Continual learner. ``extractor``: callable images -> frozen features (any backend).

    ``optimizer``: a factory ``params -> torch.optim.Optimizer`` used instead of the built-in SGD (then
    ``lr``, ``momentum``, ``weight_decay`` and ``optimizer_step`` are not used); its state is saved in
    torch's state-dict format. ``loss_components``: extra :class:`~lightcl.engine.losses.LossComponent`
    terms added after the default cross-entropy and feature-pattern terms.
    """

    def __init__(self, extractor, head: Head, *, optimizer: OptimizerFactory | None = None,
                 loss_components: Sequence[LossComponent] = (), _restoring: bool = False, **options: Any) -> None:
        known = {f.name for f in fields(LightCLConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"unknown LightCL option(s) {unknown}; known: {sorted(known)}")
        self.config = LightCLConfig(**options)
        self.config.validate()
        # LIGHTCL_MALLOC, else the export's device profile (engine/allocator.py; jetson-nano: lean); a no-op
        # when load_extractor already decided
        apply_lean_malloc(profile=(getattr(extractor, "meta", None) or {}).get("profile"))
        check_learner_args(extractor, head, self.config)
        if optimizer is not None and not callable(optimizer):
            raise InputError("optimizer must be a factory: params -> torch.optim.Optimizer")
        self._optimizer_factory = optimizer
        self._head_in_features = tuple(head.in_features)
        self.loss_components: list[LossComponent] = make_components(self.config, self._head_in_features,
                                                                     loss_components)
        self.extractor = extractor
        self.device = torch.device(self.config.device)
        self.head = head.to(self.device)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        if self.config.reset_classifier:
            self.head.reset_classifier(self.config.num_classes or 0, generator=self.generator)
            self.classes = ClassMap()
        else:  # (a state being loaded brings its own class map and a head of its own size)
            self.classes = ClassMap() if _restoring else backbone_classes(self.head, self.extractor,
                                                                             self.config.num_classes, self.generator)
        self.memory = FeaturePatternMemory(self.config.buffer_size, self.config.ratio)
        self.current_task: int | None = None
        self.finished_tasks: list[int] = []
        self.counters = {"steps": 0, "skipped_nonfinite": 0}
        self.metrics: dict[str, list] = {"til": [], "cil": [], "tasks": []}
        self.extra: dict[str, Any] = {}  # JSON-able values the application wants saved with the state
        self._pending_capture = False
        # features of the task's last full-size batch: end_task() without a batch uses them (never a remainder)
        self._last_features: Tensor | None = None
        self._lock = threading.RLock()  # one head version for predict while observe trains
        # "task": observe() takes the open task's classes only; "seen": any class seen (engine/taskfree.py)
        self.label_scope = "task"
        self.optimizer = self._make_optimizer()
        self._size_extraction()

    def _size_extraction(self) -> None:
        """Micro-batch the extractor from ``extract_budget`` (engine/microbatch.py), where it can and was not
        already told: eval-mode frozen BN only (chunks would change train-mode batch statistics)."""
        ext, budget = self.extractor, self.config.extract_budget
        if (budget is None or self._batch_statistics or not hasattr(ext, "set_memory_budget")
                or getattr(ext, "micro_batch", None) is not None):
            return
        if budget == "auto":
            budget = sum(p.numel() * p.element_size() for p in self.head.parameters())
        try:
            ext.set_memory_budget(int(budget))
        except (LightCLError, OSError, ValueError, RuntimeError):
            # no estimate for this frozen part (e.g. no torch rebuild to probe): whole batches, as before
            ext.set_memory_budget(None)

    # ------------------------------------------------------------------ helpers
    @property
    def tasks(self) -> dict[int, list[int]]:
        """task id -> its classes' ids (:mod:`lightcl.engine.classmap`; for int classes the ints themselves)."""
        return self.classes.tasks

    @property
    def class_index(self) -> dict[int, int]:
        """class id -> logit column."""
        return self.classes.index

    def class_names(self) -> list:
        """Every class the learner knows (the backbone's kept ones first), in logit-column order."""
        return self.classes.names()

    @property
    def replay(self):
        """The feature-replay component (engine/replay.py) when ``replay_budget`` is set, else None."""
        from .replay import FeatureReplay

        return next((c for c in self.loss_components if isinstance(c, FeatureReplay)), None)

    @property
    def frozen_id(self) -> str | None:
        return getattr(self.extractor, "frozen_id", None)

    @property
    def pending_capture(self) -> bool:
        """Whether the next ``observe`` takes the buffer from its own batch (``new-task-first-batch`` without a
        ``begin_task`` batch): read-only, for cost accounting (the benchmark counts that extra pass)."""
        return self._pending_capture

    @property
    def last_features(self) -> Tensor | None:
        """Frozen features of the open task's last full-size batch (what ``end_task()`` without a batch uses),
        or None: read-only, for meters that size or reuse them."""
        return self._last_features

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        meta = getattr(self.extractor, "meta", None) or {}
        shp = meta.get("input_shape")
        return tuple(shp) if shp else None

    # ---- the extractor's frozen BN (the torch backend's frozen_bn="train" is the authors' model.train())
    @property
    def frozen_bn(self) -> str:
        """``"train"`` when the extractor normalises with batch statistics while learning, else ``"eval"``."""
        return "train" if getattr(self.extractor, "batch_statistics", False) else "eval"

    @property
    def _batch_statistics(self) -> bool:
        return self.frozen_bn == "train"

    def _frozen_guard(self):
        """The learner's lock when extracting changes the frozen part (train-mode BN statistics), so that a
        prediction never sees a half-updated frozen part; nothing otherwise (extraction runs unlocked)."""
        return self._lock if self._batch_statistics else contextlib.nullcontext()

    def _inference(self):
        """Prediction mode of the extractor: fixed BN statistics (the authors predict with model.eval())."""
        ctx = getattr(self.extractor, "eval_statistics", None)
        return ctx() if ctx is not None else contextlib.nullcontext()

    def frozen_statistics(self) -> dict[str, Tensor]:
        """The frozen part's drifted BN statistics (train-mode frozen BN; part of what was learned), else {}."""
        return self.extractor.statistics() if self._batch_statistics else {}

    def _restore_frozen(self, saved: dict[str, Tensor] | None) -> None:
        if saved:
            self.extractor.load_statistics(saved)

    def _buffer_features(self) -> Tensor:
        """The buffer's frozen features (engine/step.py; engine/taskfree.py reads them too)."""
        return buffer_features(self)

    def _make_optimizer(self, old: torch.optim.Optimizer | None = None, head: Head | None = None) -> torch.optim.Optimizer:
        """A new optimizer over ``head``'s parameters (default: the learner's head; engine/step.py)."""
        return make_optimizer(self.config, self._optimizer_factory, self.head if head is None else head, old)

    @torch.no_grad()
    def extract(self, x: Tensor) -> Tensor:
        """Frozen features of a batch of images (never trains, never keeps a graph)."""
        f = self.extractor(x)
        if not isinstance(f, Tensor):
            f = torch.as_tensor(f)
        f = f.to(self.device, torch.float32)
        if f.dim() != 4 or tuple(f.shape[1:]) != self.head.in_features:
            raise ShapeError(f"the extractor gives features {list(f.shape)} but the head expects "
                             f"[N, {', '.join(map(str, self.head.in_features))}]: head and export do not match")
        return f

    @staticmethod
    def _check_features(feats: Tensor) -> None:
        if not bool(torch.isfinite(feats).all()):
            raise NonFiniteError("the frozen part gave NaN/Inf features for these images (pixel values far out of "
                                 "range?): refusing to use them")

    def prefetch(self, batches: Iterable, depth: int = 1):
        """``(x, y, features)`` for each ``(x, y)`` of ``batches``, the next batch's features extracted in a
        background thread while the caller's ``observe(x, y, features)`` trains on this one (engine/prefetch.py;
        identical results to extracting inside ``observe``). Refused with train-mode frozen BN."""
        from .prefetch import FeaturePrefetcher

        if self._batch_statistics:
            raise InputError("prefetch with frozen_bn='train' would reorder the frozen BN statistics' updates: "
                             "use observe(x, y) in sequence")
        return FeaturePrefetcher(self.extract, batches, depth=depth)

    def _check_x(self, x) -> Tensor:
        return check_images(x, self.input_shape).to(self.device)

    # ---- the class-index map: labels (any integers) <-> logit columns (in order of first appearance)
    def seen_columns(self) -> list[int]:
        """Logit columns of every class seen so far, ascending."""
        return self.classes.seen_columns()

    def task_columns(self, task_id: int) -> list[int]:
        """Logit columns of ``task_id``'s classes, in the order the task announced them."""
        return self.classes.task_columns(task_id)

    seen_indices = seen_columns
    task_indices = task_columns

    def label_index(self, y) -> Tensor:
        """Logit column of each label in ``y`` (class names: a list, or an int tensor of int classes);
        UnknownClassError for a label no task announced."""
        ids = y.long() if isinstance(y, Tensor) and not (y.is_floating_point() or y.is_complex()) \
            and self.classes.kind != "str" else self.classes.ids(y)
        return self.classes.columns(ids).to(y.device if isinstance(y, Tensor) else "cpu")

    def _index_to_labels(self, idx: Tensor) -> Tensor:
        return self.classes.ids_of_columns(idx)

    def _label_ids(self, y, n: int, allowed) -> Tensor:
        """Class ids of the labels ``y`` (names), checked against ``allowed`` ids."""
        return check_labels(self.classes.ids(y, n), n, allowed)

    # ------------------------------------------------------------------ task hooks
    def begin_task(self, task_id: int, classes: Sequence, x: Tensor | None = None, y=None) -> None:
        """Announce a task and its classes: names (``["cup", "ball"]``) or ints, one kind per learner.

        A class seen before (in an earlier task, or a backbone class kept by ``reset_classifier=False``) gets
        another lesson: it keeps its logit column, which is trained further; new classes get the next columns.

        ``x, y``: optionally a freshly drawn batch of the task; with the ``new-task-first-batch`` policy its
        first ``buffer_size`` samples become the buffer now, as the authors' ``next(iter(train_loader[task]))``
        before training. Without it the buffer is taken from the first batch ``observe`` gets.
        """
        if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id < 0:
            raise InputError(f"task_id must be a non-negative int, got {task_id!r}")
        names = self.classes.check_names(classes)  # 2.0, 0.5 or a mix of str and int is not a class
        if self.current_task is not None:
            raise InputError(f"task {self.current_task} is still open: call end_task() first")
        ids, new = self.classes.ids_for_new_task(names)
        if task_id in self.tasks:
            if task_id in self.finished_tasks:
                raise InputError(f"task {task_id} was already learned")
            if self.tasks[task_id] != ids:
                raise InputError(f"task {task_id} was announced with classes "
                                 f"{[self.classes.name(c) for c in self.tasks[task_id]]}")
        capacity = self.config.num_classes
        if capacity is not None and len(self.class_index) + len(new) > capacity:
            raise InputError(f"the classifier has {capacity} outputs; {len(self.class_index) + len(new)} classes "
                             "would not fit (use num_classes=None for an expandable classifier)")
        if (x is None) != (y is None):
            raise InputError("begin_task takes a buffer batch as both x and y, or neither")
        capture_now = (x is not None and bool(self.finished_tasks) and self.config.buffer_size > 0
                       and self.config.buffer_policy == "new-task-first-batch")
        if x is not None:
            x = self._check_x(x)
            bad = self.classes.outside(y, x.shape[0], names)  # checked before the map changes
            if bad:
                raise UnknownClassError(f"labels {bad[:10]} are not among the task's classes {names}")
        with self._frozen_guard():
            captured = None
            if capture_now:  # the buffer on its own through the frozen part (train-mode BN: its own statistics)
                saved_frozen = self.frozen_statistics()
                n = min(self.config.buffer_size, x.shape[0])
                captured = self.extract(x[:n])
                try:
                    self._check_features(captured)
                    with self._lock:  # the capture's train-mode pass must not overflow the head's BN statistics
                        checked_train_taps(self.head, captured, keep=False)
                except NonFiniteError:
                    self._restore_frozen(saved_frozen)
                    raise
            self._open_task(task_id, names, capacity, x, y, captured)

    def _open_task(self, task_id: int, names: list, capacity: int | None, x: Tensor | None,
                   y, captured: Tensor | None) -> None:
        with self._lock:
            ids = self.classes.add_task(task_id, names)
            if y is not None:
                y = check_labels(self.classes.ids(y, x.shape[0]), x.shape[0], ids).to(self.device)
            if capacity is None and len(self.class_index) > self.head.num_classes:
                self.head.expand_classes(len(self.class_index), generator=self.generator)
                self.optimizer = self._make_optimizer(self.optimizer)
            self.current_task = task_id
            self._last_features = None
            if self.finished_tasks and self.config.buffer_size > 0:
                if self.config.buffer_policy == "new-task-first-batch" and captured is not None:
                    self.memory.set_buffer(captured, y, task_id, images=x if self._batch_statistics else None)
                    _, taps = self._taps(self.memory.features)
                    self.memory.record_targets(taps)
                    self._pending_capture = False
                elif self.config.buffer_policy == "new-task-first-batch":
                    self._pending_capture = True
                elif len(self.memory):
                    _, taps = self._taps(self._buffer_features())
                    self.memory.record_targets(taps, self.memory.origin != task_id)

    def _taps(self, features: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Head taps in train mode (as the authors record them), no graph."""
        return train_taps(self.head, features)

    def observe(self, x: Tensor, y, features: Tensor | None = None) -> dict[str, float]:
        """One update step on a batch of the current task. Returns ``loss`` (the weighted sum), each loss
        component's unweighted value by name (``ce``, ``feature_pattern``, then any extra), ``skipped``
        and ``step_ms``; with ``replay_steps``, ``replay_updates`` (the extra replay updates applied).

        ``features``: this batch's frozen features already extracted (:meth:`prefetch` overlaps that with the
        previous step); refused with train-mode frozen BN, where extraction is part of the step's order.

        Order as in the authors' ``my_train``: the buffer goes through the model first (on its own), then
        the batch; the head's BN statistics (and, with ``frozen_bn="train"``, the frozen part's) see them
        in that order.
        """
        if self.current_task is None:
            raise InputError("no open task: call begin_task(task_id, classes) first")
        x = self._check_x(x)
        # "task": the open task's classes only; "seen": any class seen (task-free learning, engine/taskfree.py)
        allowed = self.tasks[self.current_task] if self.label_scope == "task" else list(self.class_index)
        y = self._label_ids(y, x.shape[0], allowed).to(self.device)
        if features is not None:
            features = given_features(self, features, x)
        return observe_batch(self, x, y, features)

    def end_task(self, x: Tensor | None = None) -> None:
        """Close the task: vital channels from the head's taps (train mode) on a batch of its data.

        ``x``: a freshly drawn full batch of the task, as the authors do (``next(iter(train_loader[task]))``);
        the runner and the benchmark pass one. Without it: the task's last full-size observed batch (a
        trailing remainder of 3 images never decides the masks), its features as extracted then.
        """
        if self.current_task is None:
            raise InputError("no open task to end")
        with self._frozen_guard():
            saved_frozen = self.frozen_statistics()
            feats = self.extract(self._check_x(x)) if x is not None else self._last_features
            if feats is None:
                raise InputError(f"task {self.current_task} saw no data: observe() a batch or pass end_task(x)")
            try:
                self._check_features(feats)
            except NonFiniteError:
                self._restore_frozen(saved_frozen)
                raise
            with self._lock:
                try:  # finite but extreme features can still overflow the head's BN statistics
                    _, taps = checked_train_taps(self.head, feats)
                except NonFiniteError:
                    self._restore_frozen(saved_frozen)
                    raise
                self.memory.update_masks(taps)
                self.finished_tasks.append(self.current_task)
                self.current_task = None
                self._last_features = None
                self._pending_capture = False

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """Logits with the whole model in prediction mode (eval-mode BN everywhere, nothing updated)."""
        x = self._check_x(x)
        with self._frozen_guard(), self._inference():
            feats = self.extract(x)
        self._check_features(feats)
        with self._lock:
            was = self.head.training
            self.head.eval()
            try:
                return self.head(feats)
            finally:
                self.head.train(was)

    @torch.no_grad()
    def predict(self, x: Tensor, mode: str = "cil", task_id: int | None = None, names: bool = False):
        """Labels: ``cil`` = argmax over every class seen; ``til`` = argmax inside ``task_id``'s classes.

        A tensor of class ids (for int classes: the classes themselves); ``names=True``: a list of class
        names (``["cup", "ball", ...]``, or ints for int classes)."""
        if mode not in ("cil", "til"):
            raise InputError(f"mode must be 'cil' or 'til', got {mode!r}")
        with self._lock:  # the class map is read under the lock that begin_task changes it under
            if not self.class_index:
                raise InputError("the learner has seen no class yet")
            if mode == "til":
                if task_id is None:
                    raise InputError("mode='til' needs task_id")
                idx = self.task_columns(task_id)
            else:
                idx = self.seen_columns()
        out = self.logits(x)[:, idx]  # columns only grow: those read above are all in these logits
        with self._lock:
            ids = self._index_to_labels(torch.tensor(idx)[out.argmax(1).cpu()])
            return [self.classes.name(c) for c in ids.tolist()] if names else ids

    @torch.no_grad()
    def evaluate(self, stream: Iterable[tuple[int, Iterable[tuple[Tensor, Tensor]]]], record: bool = True) -> dict:
        """Accuracy per task (TIL and CIL from one pass). ``stream``: (task_id, batches of (x, y)).

        With ``record`` the row is appended to the accuracy matrices in ``self.metrics``.
        """
        til, cil, ids = [], [], []
        try:
            stream = list(stream)
            items = [(task_id, batches) for task_id, batches in stream]
        except (TypeError, ValueError):
            raise InputError("evaluate() takes an iterable of (task_id, batches of (x, y))") from None
        for task_id, batches in items:
            with self._lock:  # the class map is read under the lock begin_task changes it under
                tcols, scols = self.task_columns(task_id), self.seen_columns()
            n = ct = cc = 0
            try:
                batches = iter(batches)
            except TypeError:
                raise InputError(f"evaluate(): the batches of task {task_id} are not iterable") from None
            for batch in batches:
                try:
                    x, y = batch
                except (TypeError, ValueError):
                    raise InputError(f"evaluate(): each batch of task {task_id} must be a pair (x, y)") from None
                logits = self.logits(x).cpu()
                with self._lock:
                    y = self._label_ids(y, x.shape[0], self.tasks[task_id]).cpu()
                    target = self.classes.columns(y)
                t, c = count_correct(logits, target, tcols, scols)
                ct, cc, n = ct + t, cc + c, n + len(y)
            til.append(ct / max(1, n))
            cil.append(cc / max(1, n))
            ids.append(task_id)
        if record:
            self.metrics["til"].append(til)
            self.metrics["cil"].append(cil)
            self.metrics["tasks"].append(ids)
        return {"til": til, "cil": cil, "tasks": ids}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything that defines the training state: JSON values and tensors (references, as torch's
        ``state_dict``: ``copy.deepcopy`` it to keep a snapshot while training goes on).

        Keys: ``config``, ``tasks``, ``class_index`` (class ids), ``class_map`` (the names and kind,
        :meth:`ClassMap.state_entry`), ``current_task``, ``finished_tasks``,
        ``pending_capture``, ``counters``, ``metrics``, ``extra``, ``frozen_id``, ``frozen_bn``,
        ``loss_components`` ([name, weight] of each term), ``optimizer_class``, ``head`` (the head's module
        state dict), ``memory`` (:meth:`FeaturePatternMemory.state_dict`), ``optimizer`` (the optimizer's own
        ``state_dict()``, torch's format), ``rng`` (the generator state), ``frozen_statistics`` (the frozen
        part's drifted BN statistics with ``frozen_bn="train"``, else empty), ``last_features`` (the
        open task's last full-size batch features, or None).
        """
        with self._lock:
            return build_state(self)

    def load_state_dict(self, state: Mapping[str, Any], where: str = "state dict") -> None:
        """Restore :meth:`state_dict`'s output into this learner, made with the same options (``device`` may
        differ), extractor mode, loss components and optimizer. Every entry is checked before anything
        changes (IntegrityError naming ``where``). An expandable classifier grows to the state's size (the
        learner then holds a new head object).
        """
        load_into(self, state, where)

    def save(self, directory) -> None:
        from .state import save_state

        with self._lock:
            save_state(self, directory)

    # A state learned with train-mode frozen BN must be reopened with an extractor that uses its statistics
    check_frozen_bn = staticmethod(check_frozen_bn)

    @classmethod
    def load(cls, directory, extractor, device: str | None = None, *, optimizer: OptimizerFactory | None = None,
             loss_components: Sequence[LossComponent] = ()) -> "LightCL":
        """The learner saved in ``directory``; ``optimizer`` and ``loss_components`` as given when it was made."""
        from .state import load_state

        return load_state(cls, directory, extractor, device=device, optimizer=optimizer,
                          loss_components=loss_components)

    def memory_report(self) -> dict:
        """Bytes held by the trainable part: weights, gradients, optimizer state, buffer + masks, and the
        feature-replay memory (``replay_bytes``: codes + labels + codebooks, never above ``replay_budget``).

        ``head_grads_bytes`` is the most gradient bytes the step holds at once: every trainable parameter's
        with the plain step; with the per-parameter step (hooks active) one parameter's at a time, since each
        gradient is applied and dropped as autograd accumulates it, so the largest one
        (``bench update --ledger`` measures the same with gradient hooks)."""
        params = sum(p.numel() * p.element_size() for p in self.head.parameters())
        grads = [p.numel() * p.element_size() for p in self.head.parameters() if p.requires_grad]
        in_backward = bool(getattr(self.optimizer, "in_backward", False))
        opt = sum(v.numel() * v.element_size() for st in self.optimizer.state.values() for v in st.values()
                  if isinstance(v, Tensor))
        return {"head_weights_bytes": params, "head_grads_bytes": max(grads, default=0) if in_backward else sum(grads),
                "optimizer_bytes": opt, "memory_bytes": self.memory.nbytes(),
                "replay_bytes": 0 if self.replay is None else self.replay.memory.nbytes(),
                "optimizer_step": "per-parameter" if in_backward else "plain"}

