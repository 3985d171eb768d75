"""The LightCL learner: a frozen extractor + a trainable head kept from forgetting by the
feature-pattern memory.

Mammoth-style contract: ``begin_task`` / ``observe`` (one batch at a time, so a robot can feed frames
as they arrive) / ``end_task``; ``predict`` and ``evaluate`` for inference. The loss is a list of
weighted components (engine/losses.py, after Renate's learner components): cross-entropy on the task's
logit slice and the feature-pattern penalty by default, plus any the caller adds. Defaults reproduce the
authors' code; every departure is a named option. ``state_dict()``/``load_state_dict()`` hold the whole
training state; engine/state.py only writes it to and reads it from a directory.
"""
from __future__ import annotations

import contextlib
import copy
import math
import operator
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .allocator import apply_lean_malloc
from .classmap import ClassMap
from .errors import InputError, IntegrityError, LightCLError, NonFiniteError, ShapeError, UnknownClassError, UnknownTaskError
from .head import Head
from .losses import FeaturePattern, LossComponent, LossContext, SlicedCrossEntropy, total_loss
from .memory import FeaturePatternMemory
from .metrics import count_correct
from .state_check import bump, check_whole
from .validate import check_images, check_labels, check_learner_args

BUFFER_POLICIES = ("new-task-first-batch", "reservoir")
OPTIMIZER_STEPS = ("per-parameter", "plain")
LOSS_SLICES = ("task", "all")
RESERVED_STEP_KEYS = ("loss", "skipped", "step_ms")
# per-element optimizer states of torch's built-in optimizers: each must have its parameter's shape
ELEMENTWISE_OPTIMIZER_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg",
                               "acc_delta", "sum", "prev", "step_size", "ax", "eta_l", "mu_product")
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass
class LightCLConfig:
    """Options. Defaults = the authors' code (SGD lr 0.01, beta 2e-4, N=15, ratio 0.15)."""

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    beta: float = 2e-4
    buffer_size: int = 15
    ratio: float = 0.15
    # new-task-first-batch: the first N samples of the new task's first batch (authors' code);
    # reservoir: reservoir sample of old tasks' samples (the paper's text).
    buffer_policy: str = "new-task-first-batch"
    # task: cross-entropy on the current task's logit slice (authors' code); all: over all seen classes.
    loss_slice: str = "task"
    # Fixed classifier size; None = expandable classifier that grows as tasks bring classes.
    num_classes: int | None = None
    # Replace the pretrained classifier by a fresh one for the continual-learning classes (authors). False: keep
    # the backbone's classifier and its classes (named by the export's class_names); lessons add columns.
    reset_classifier: bool = True
    seed: int = 0
    device: str = "cpu"
    # per-parameter: the SGD update applied to each parameter as its gradient is ready, during backward
    # (engine/optim.py; no full set of gradients is ever held; same numbers as plain); plain: torch.optim.SGD.
    optimizer_step: str = "per-parameter"
    # Feature replay (engine/replay.py): a byte budget ("2MiB", "512KiB"; None = off) of compressed frozen
    # features replayed through the head with each batch, cross-entropy over every seen class.
    replay_budget: Any = None
    replay_codec: str = "int8"  # int8 (per-channel scales), pq (REMIND's product quantisation), fp32
    replay_batch: int = 32  # replayed samples per step
    replay_weight: float = 1.0
    replay_pq_subvectors: int = 0  # pq: pieces per feature vector (0: channels / 8)
    # Memory for the frozen part's transient activations while learning (engine/microbatch.py): "auto" = the
    # head's weight bytes (so extraction never dominates the step's peak), an int = bytes, None = whole batches.
    # Acts on an extractor with set_memory_budget, eval-mode frozen BN and no micro_batch of its own; the
    # features equal whole-batch ones to float32 rounding.
    extract_budget: Any = "auto"

    def validate(self) -> None:
        for name in ("lr", "momentum", "weight_decay", "beta", "ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{name} must be a finite number, got {v!r}")
        for name in ("buffer_size", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise InputError(f"{name} must be an integer, got {v!r}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)):
            raise InputError(f"num_classes must be an integer or None, got {self.num_classes!r}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise InputError("momentum >= 0 and weight_decay >= 0 are required")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise InputError(f"bad device {self.device!r} ({e})") from None
        if self.buffer_policy not in BUFFER_POLICIES:
            raise InputError(f"buffer_policy must be one of {BUFFER_POLICIES}, got {self.buffer_policy!r}")
        if self.optimizer_step not in OPTIMIZER_STEPS:
            raise InputError(f"optimizer_step must be one of {OPTIMIZER_STEPS}, got {self.optimizer_step!r}")
        if self.loss_slice not in LOSS_SLICES:
            raise InputError(f"loss_slice must be one of {LOSS_SLICES}, got {self.loss_slice!r}")
        if not (0.0 < self.ratio <= 1.0):
            raise InputError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.buffer_size < 0 or self.lr <= 0 or self.beta < 0:
            raise InputError("buffer_size >= 0, lr > 0 and beta >= 0 are required")
        if self.num_classes is not None and self.num_classes < 1:
            raise InputError("num_classes must be >= 1 (or None for an expandable classifier)")
        if self.replay_budget is not None:
            from .codecs import CODECS
            from .replay import parse_bytes

            parse_bytes(self.replay_budget)
            if self.replay_codec not in CODECS:
                raise InputError(f"replay_codec must be one of {CODECS}, got {self.replay_codec!r}")
            for name in ("replay_batch", "replay_pq_subvectors"):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "replay_batch" else 0):
                    raise InputError(f"{name} must be a {'positive' if name == 'replay_batch' else 'non-negative'} "
                                     f"integer, got {v!r}")
            w = self.replay_weight
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise InputError(f"replay_weight must be a finite number >= 0, got {w!r}")
        b = self.extract_budget
        if not (b is None or b == "auto" or (isinstance(b, int) and not isinstance(b, bool) and b > 0)):
            raise InputError(f"extract_budget must be 'auto', a positive number of bytes or None, got {b!r}")


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
        self.loss_components: list[LossComponent] = self._components(loss_components)
        self.extractor = extractor
        self.device = torch.device(self.config.device)
        self.head = head.to(self.device)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        if self.config.reset_classifier:
            self.head.reset_classifier(self.config.num_classes or 0, generator=self.generator)
            self.classes = ClassMap()
        else:  # (a state being loaded brings its own class map and a head of its own size)
            self.classes = ClassMap() if _restoring else self._backbone_classes()
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
    def _backbone_classes(self) -> ClassMap:
        """``reset_classifier=False``: the head's classifier keeps the backbone's classes, named by the export's
        ``class_names`` (absent: ``"0".."K-1"``, or the ints ``0..K-1`` if the lessons use ints)."""
        k = self.head.num_classes
        names = (getattr(self.extractor, "meta", None) or {}).get("class_names")
        if names is not None and (not isinstance(names, list) or len(names) != k):
            raise InputError(f"the export's class_names name {len(names) if isinstance(names, list) else '?'} "
                             f"classes, its classifier has {k} outputs")
        capacity = self.config.num_classes
        if capacity is not None and capacity < k:
            raise InputError(f"num_classes={capacity} is less than the backbone's {k} classes kept by "
                             "reset_classifier=False (use num_classes=None: the classifier grows)")
        if capacity is not None and capacity > k:
            self.head.expand_classes(capacity, generator=self.generator)
        return ClassMap(names if names is not None else k)

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
        """Frozen features of the buffer. With batch-dependent features (train-mode frozen BN) the buffer
        images go through the frozen part on their own, as in the authors' code; else the stored features."""
        if self._batch_statistics and self.memory.images is not None:
            return self.extract(self.memory.images)
        return self.memory.features

    def _components(self, extra: Sequence[LossComponent]) -> list[LossComponent]:
        """The default terms (cross-entropy on the step's columns, the feature-pattern penalty) + ``extra``."""
        if isinstance(extra, LossComponent) or not isinstance(extra, (list, tuple)):
            raise InputError("loss_components must be a list of LossComponent")
        comps: list[LossComponent] = [SlicedCrossEntropy(), FeaturePattern(self.config.beta)]
        if self.config.replay_budget is not None:
            from .replay import make_replay

            c = self.config
            comps.append(make_replay(c.replay_budget, c.replay_codec, self._head_in_features, c.replay_batch,
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

    def _make_optimizer(self, old: torch.optim.Optimizer | None = None, head: Head | None = None) -> torch.optim.Optimizer:
        """A new optimizer over ``head``'s parameters (default: the learner's head)."""
        head = self.head if head is None else head
        if old is not None and hasattr(old, "remove"):
            old.remove()  # PerParameterSGD: its hooks sit on the parameters that survive; never update them twice
        if self._optimizer_factory is not None:
            opt = self._optimizer_factory(head.parameters())
            if not isinstance(opt, torch.optim.Optimizer):
                raise InputError(f"the optimizer factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
        elif self.config.optimizer_step == "per-parameter":
            from .optim import PerParameterSGD

            opt = PerParameterSGD(head.parameters(), lr=self.config.lr, momentum=self.config.momentum,
                                  weight_decay=self.config.weight_decay)
        else:
            opt = torch.optim.SGD(head.parameters(), lr=self.config.lr, momentum=self.config.momentum,
                                  weight_decay=self.config.weight_decay)
        if old is not None:  # classifier growth: surviving parameters keep their state and group settings
            for p in head.parameters():
                if p in old.state:
                    opt.state[p] = old.state[p]
            if len(old.param_groups) == len(opt.param_groups):
                for g_new, g_old in zip(opt.param_groups, old.param_groups):
                    g_new.update({k: v for k, v in g_old.items() if k != "params"})
        return opt

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

    def _given_features(self, features: Tensor, x: Tensor) -> Tensor:
        if self._batch_statistics:
            raise InputError("features given to observe() with frozen_bn='train': the step extracts the buffer and "
                             "the batch itself, in the authors' order; pass images only")
        if not isinstance(features, Tensor) or features.dim() != 4 or features.shape[0] != x.shape[0] \
                or tuple(features.shape[1:]) != tuple(self.head.in_features):
            got = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ShapeError(f"features {got} do not fit this batch and head: want [{x.shape[0]}, "
                             f"{', '.join(map(str, self.head.in_features))}]")
        return features.detach().to(self.device, torch.float32)

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

    def _bn_buffers(self) -> list[Tensor]:
        return [b.detach().clone() for b in self.head.buffers()]

    def _restore_bn(self, saved: list[Tensor]) -> None:
        with torch.no_grad():
            for b, s in zip(self.head.buffers(), saved):
                b.copy_(s)

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

    @torch.no_grad()
    def _taps(self, features: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Head taps in train mode (as the authors record them), no graph."""
        self.head.train()
        return self.head(features, return_taps=True)

    def observe(self, x: Tensor, y, features: Tensor | None = None) -> dict[str, float]:
        """One update step on a batch of the current task. Returns ``loss`` (the weighted sum), each loss
        component's unweighted value by name (``ce``, ``feature_pattern``, then any extra), ``skipped``
        and ``step_ms``.

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
            features = self._given_features(features, x)
        t0 = time.perf_counter()
        task = self.current_task
        with self._frozen_guard():
            saved_frozen = self.frozen_statistics()
            capture = self._pending_capture
            n_buf = min(self.config.buffer_size, x.shape[0])
            use_buffer = any(c.uses_buffer() for c in self.loss_components) and (capture or self.memory.active())
            captured = buffer_feats = None
            if self._batch_statistics:  # the buffer alone: targets' pass (capture), then this step's pass
                if capture:
                    captured = self.extract(x[:n_buf])
                if use_buffer:
                    buffer_feats = self.extract(x[:n_buf]) if capture else self._buffer_features()
            feats = self.extract(x) if features is None else features
            if not all(bool(torch.isfinite(f).all()) for f in (captured, buffer_feats, feats) if f is not None):
                # Finite but extreme pixels can overflow the frozen part. Such a batch must not reach the
                # buffer, the BN statistics or the masks: skip it like a non-finite loss.
                self._restore_frozen(saved_frozen)
                with self._lock:
                    bump(self.counters, "skipped_nonfinite")
                out = {"loss": float("nan"), **{c.name: float("nan") for c in self.loss_components}, "skipped": 1,
                       "step_ms": (time.perf_counter() - t0) * 1000.0}
                out["feature_pattern"] = 0.0
                return out
            with self._lock:
                out = self._step(x, y, feats, task, capture, captured, buffer_feats, use_buffer, saved_frozen)
        out["step_ms"] = (time.perf_counter() - t0) * 1000.0
        return out

    def _step(self, x: Tensor, y: Tensor, feats: Tensor, task: int, capture: bool, captured: Tensor | None,
              buffer_feats: Tensor | None, use_buffer: bool, saved_frozen: dict[str, Tensor]) -> dict[str, float]:
        saved_bn = self._bn_buffers()
        saved_memory = None
        if capture:
            saved_memory = self.memory.snapshot()
            images = x if self._batch_statistics else None
            self.memory.set_buffer(feats if captured is None else captured, y, task, images=images)
            _, taps = self._taps(self.memory.features)
            self.memory.record_targets(taps)
            self._pending_capture = False
        self.head.train()
        buffer_taps = None
        if use_buffer and self.memory.active():  # buffer first, as the authors
            _, buffer_taps = self.head(self.memory.features if buffer_feats is None else buffer_feats,
                                       return_taps=True)
        logits = self.head(feats)
        seen = self.seen_columns()  # once per step: the loss slice and the replay component both use it
        columns = self.task_columns(task) if self.config.loss_slice == "task" else seen
        context = LossContext(logits=logits, target_index=self.classes.columns(y).to(y.device), columns=columns, labels=y,
                              features=feats, task=task, memory=self.memory, buffer_taps=buffer_taps,
                              head=self.head, seen_columns=seen)
        loss, values = total_loss(self.loss_components, context)
        out = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in values.items()}, "skipped": 0}
        if not torch.isfinite(loss):
            self._restore_bn(saved_bn)
            self._restore_frozen(saved_frozen)
            if saved_memory is not None:  # the capture happens again on the next good batch
                self.memory.restore(saved_memory)
                self._pending_capture = True
            bump(self.counters, "skipped_nonfinite")
            out["skipped"] = 1
            return out
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        bump(self.counters, "steps")
        for c in self.loss_components:
            c.after_step(context)
        if self.config.buffer_policy == "reservoir" and self.config.buffer_size > 0:
            self.memory.reservoir_add(feats, y, task, self.generator, images=x if self._batch_statistics else None)
        if self._last_features is None or feats.shape[0] >= self._last_features.shape[0]:
            self._last_features = feats  # a trailing remainder never replaces a full batch
        return out

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
                _, taps = self._taps(feats)
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
            return {
                "config": asdict(self.config),
                "tasks": [[t, list(cs)] for t, cs in self.tasks.items()],
                "class_index": [[c, i] for c, i in self.class_index.items()],
                "class_map": self.classes.state_entry(),
                "current_task": self.current_task,
                "finished_tasks": list(self.finished_tasks),
                "pending_capture": self._pending_capture,
                "counters": dict(self.counters),
                "metrics": self.metrics,
                "extra": self.extra,
                "frozen_id": self.frozen_id,
                "frozen_bn": self.frozen_bn,
                "loss_components": [[c.name, c.weight] for c in self.loss_components],
                "optimizer_class": type(self.optimizer).__name__,
                "head": {k: v.detach() for k, v in self.head.state_dict().items()},
                "memory": self.memory.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": self.generator.get_state(),
                "frozen_statistics": {k: v.detach() for k, v in self.frozen_statistics().items()},
                "last_features": None if self._last_features is None else self._last_features.detach(),
                **({} if self.replay is None else {"replay": self.replay.memory.state_dict()}),
            }

    def load_state_dict(self, state: Mapping[str, Any], where: str = "state dict") -> None:
        """Restore :meth:`state_dict`'s output into this learner, made with the same options (``device`` may
        differ), extractor mode, loss components and optimizer. Every entry is checked before anything
        changes (IntegrityError naming ``where``). An expandable classifier grows to the state's size (the
        learner then holds a new head object).
        """
        if not isinstance(state, Mapping):
            raise IntegrityError(f"{where}: a learner state dict is a mapping, got {type(state).__name__}")
        missing = sorted(set(STATE_KEYS) - set(state))
        unknown = sorted(set(state) - set(STATE_KEYS) - OPTIONAL_STATE_KEYS)
        if missing or unknown:
            raise IntegrityError(f"{where}: learner state entries {'missing ' + str(missing) if missing else ''}"
                                 f"{' ' if missing and unknown else ''}{'unknown ' + str(unknown) if unknown else ''}")
        self._check_identity(state, where)
        head_sd = state["head"]
        fc_key = getattr(self.head, "classifier_key", "fc") + ".weight"  # "net.<classifier>" for a graph head
        if not isinstance(head_sd, Mapping) or not all(isinstance(v, Tensor) for v in head_sd.values()) \
                or not isinstance(head_sd.get(fc_key), Tensor) or head_sd[fc_key].dim() != 2:
            raise IntegrityError(f"{where}: head must be the head's module state dict")
        rows = int(head_sd[fc_key].shape[0])
        tasks, class_index = _check_tasks(state, rows, where)
        classes = ClassMap.from_state(state.get("class_map"), tasks, class_index, where)
        with self._lock:
            head = self.head
            if rows != head.num_classes:
                if self.config.num_classes is not None or rows < head.num_classes:
                    raise IntegrityError(f"{where}: the state's classifier has {rows} outputs, this learner's "
                                         f"{head.num_classes}")
                head = copy.deepcopy(head)
                head.expand_classes(rows, generator=torch.Generator())  # its new rows are overwritten below
            want = {k: v.shape for k, v in head.state_dict().items()}
            if set(want) != set(head_sd) or any(head_sd[k].shape != want[k] or not bool(torch.isfinite(head_sd[k].float()).all())
                                                for k in want):
                raise IntegrityError(f"{where}: head weights do not fit this head (names, shapes or non-finite values)")
            checked = self._check_plain(state, head, rows, class_index, where)
            whole = check_whole(state, tasks, where)  # cross-field invariants and the RNG, before any change
            replay = self.replay
            if "replay" in state and replay is None:
                raise IntegrityError(f"{where} holds a replay memory but this learner has no replay_budget")
            if replay is not None:  # a state without one (made before replay existed) starts with an empty memory
                fresh = replay.memory.empty_like()
                if "replay" in state:
                    if not isinstance(state["replay"], Mapping):
                        raise IntegrityError(f"{where}: replay must be the replay memory's state dict")
                    fresh.load_state_dict(state["replay"], known_columns=class_index.values(),
                                          where=f"{where}: replay")
            optimizer = self._make_optimizer(head=head)
            try:
                self._load_optimizer(optimizer, state["optimizer"], where)
                if checked["frozen"]:
                    try:
                        self.extractor.load_statistics(dict(checked["frozen"]))
                    except LightCLError:
                        raise
                    except Exception as e:
                        raise IntegrityError(f"{where}: frozen_statistics do not fit this extractor "
                                             f"({str(e).splitlines()[0][:200]})") from None
            except BaseException:
                if hasattr(optimizer, "remove"):
                    optimizer.remove()
                raise
            with torch.no_grad():
                head.load_state_dict({k: v.to(self.device) for k, v in head_sd.items()})
            if hasattr(self.optimizer, "remove"):
                self.optimizer.remove()
            self.head, self.optimizer, self.memory = head, optimizer, checked["memory"]
            if replay is not None:
                replay.memory = fresh
            self.config.seed = state["config"].get("seed", self.config.seed)
            self.config.reset_classifier = state["config"].get("reset_classifier", self.config.reset_classifier)
            self.generator.set_state(state["rng"])
            self.classes = classes
            self.current_task = None if state["current_task"] is None else int(state["current_task"])
            self.finished_tasks = [int(t) for t in state["finished_tasks"]]
            self._pending_capture = state["pending_capture"]
            self.counters.update(whole["counters"])
            self.metrics, self.extra = whole["metrics"], whole["extra"]
            last = state["last_features"]
            self._last_features = None if last is None else last.to(self.device)

    def _check_identity(self, state: Mapping[str, Any], where: str) -> None:
        """Refuse a state of another frozen part, extractor mode, option set, loss or optimizer."""
        want, have = state.get("frozen_id"), self.frozen_id
        if want and have and want != have:
            raise IntegrityError(f"{where} was trained against frozen part {str(want)[:12]}..., but this extractor "
                                 f"runs {have[:12]}...: load it with the export it was learned on")
        self.check_frozen_bn(state.get("frozen_bn"), self.extractor, where)
        config = state["config"]
        if not isinstance(config, Mapping):
            raise IntegrityError(f"{where}: config must be a JSON object")
        if isinstance(config.get("seed", 0), bool) or not isinstance(config.get("seed", 0), int) \
                or not isinstance(config.get("reset_classifier", True), bool):
            raise IntegrityError(f"{where}: config seed must be an integer and reset_classifier true or false")
        mine = asdict(self.config)
        defaults = asdict(LightCLConfig())  # an option a state predates has its default
        differ = sorted(k for k in set(mine) | set(config)
                        if k not in INIT_ONLY_OPTIONS and config.get(k, defaults.get(k)) != mine.get(k))
        if differ:
            raise IntegrityError(f"{where} was made with other options ({', '.join(differ)}): use LightCL.load, or a "
                                 "learner made with the state's config")
        recorded = state.get("loss_components")
        current = [[c.name, c.weight] for c in self.loss_components]
        if recorded is not None and [[n, float(w)] for n, w in recorded] != current:
            raise InputError(f"{where} was learned with loss components {recorded}; this learner has {current}: "
                             "pass the same loss_components")
        recorded = state.get("optimizer_class")
        have_cls = type(self.optimizer).__name__
        if recorded is not None and recorded != have_cls and {recorded, have_cls} != {"SGD", "PerParameterSGD"}:
            raise InputError(f"{where} was learned with the optimizer {recorded}; this learner has {have_cls}: pass "
                             "the same optimizer factory")

    def _check_plain(self, state: Mapping[str, Any], head: Head, rows: int, class_index: dict[int, int],
                     where: str) -> dict[str, Any]:
        """Check the RNG, frozen statistics, last features, counters, metrics, extra; build the memory."""
        rng = state["rng"]
        ref = torch.Generator().get_state()
        if not isinstance(rng, Tensor) or rng.dtype != ref.dtype or rng.shape != ref.shape:
            raise IntegrityError(f"{where}: rng is not a generator state")
        frozen = state["frozen_statistics"]
        if not isinstance(frozen, Mapping) or any(
                not isinstance(v, Tensor) or v.dtype not in (torch.float32, torch.int64)
                or not bool(torch.isfinite(v.float()).all()) for v in frozen.values()):
            raise IntegrityError(f"{where}: frozen_statistics must be finite float32/int64 BN statistics")
        last = state["last_features"]
        if last is not None and (not isinstance(last, Tensor) or last.dtype != torch.float32 or last.dim() != 4
                                 or tuple(last.shape[1:]) != tuple(head.in_features)):
            raise IntegrityError(f"{where}: last_features must be float32 [N, {list(head.in_features)}]")
        counters = state["counters"]
        if not isinstance(counters, Mapping) or any(
                isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < (1 << 63) for v in counters.values()):
            raise IntegrityError(f"{where}: counters must map names to non-negative integers")
        for key in ("metrics", "extra"):
            if not isinstance(state[key], dict):
                raise IntegrityError(f"{where}: {key} must be a JSON object")
        if not isinstance(state["pending_capture"], bool):
            raise IntegrityError(f"{where}: pending_capture must be true or false")
        if not isinstance(state["memory"], Mapping):
            raise IntegrityError(f"{where}: memory must be the memory's state dict")
        was = head.training
        head.eval()
        try:
            with torch.no_grad():
                _, taps = head(torch.zeros(1, *head.in_features, device=self.device), return_taps=True)
        finally:
            head.train(was)
        memory = FeaturePatternMemory(self.config.buffer_size, self.config.ratio)
        memory.load_state_dict(state["memory"], in_features=head.in_features, num_classes=rows,
                               tap_shapes={k: tuple(v.shape[1:]) for k, v in taps.items()},
                               known_labels=class_index, image_shape=self.input_shape, device=self.device,
                               where=f"{where}: memory")
        return {"memory": memory, "frozen": frozen}

    def _load_optimizer(self, optimizer, sd, where: str) -> None:
        """The optimizer's own ``load_state_dict`` after checking what torch does not: per-element states have
        their parameter's shape, floating states are finite."""
        if not isinstance(sd, Mapping) or not isinstance(sd.get("state"), Mapping) \
                or not isinstance(sd.get("param_groups"), list):
            raise IntegrityError(f"{where}: optimizer must be an optimizer state dict (state, param_groups)")
        params = [p for g in optimizer.param_groups for p in g["params"]]
        sd = {"state": {_int(int(k) if isinstance(k, str) and k.isdigit() and len(k) < 20 else k,
                             f"{where}: optimizer state key"): v for k, v in sd["state"].items()},
              "param_groups": sd["param_groups"]}
        for k, st in sd["state"].items():
            if not 0 <= k < len(params) or not isinstance(st, Mapping):
                raise IntegrityError(f"{where}: optimizer state for parameter {k} of {len(params)}")
            for name, v in st.items():
                if not isinstance(v, Tensor):
                    continue
                if (v.is_floating_point() and not bool(torch.isfinite(v).all())) or \
                        (name in ELEMENTWISE_OPTIMIZER_STATE and v.shape != params[k].shape):
                    raise IntegrityError(f"{where}: optimizer state {k}.{name} ({v.dtype} {list(v.shape)}) does not "
                                         f"fit its parameter {list(params[k].shape)}")
        try:
            optimizer.load_state_dict(sd)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise IntegrityError(f"{where}: optimizer state does not fit ({str(e).splitlines()[0][:200]})") from None

    def save(self, directory) -> None:
        from .state import save_state

        with self._lock:
            save_state(self, directory)

    @staticmethod
    def check_frozen_bn(recorded: str | None, extractor, where: Any = "the state") -> None:
        """A state learned with train-mode frozen BN holds the frozen part's drifted statistics and must be
        reopened with an extractor that uses them (torch, ``frozen_bn="train"``), and vice versa."""
        have = "train" if getattr(extractor, "batch_statistics", False) else "eval"
        if recorded is None or recorded == have:  # None: a state saved before the mode was recorded
            return
        if recorded == "train":
            raise InputError(f"{where} was learned with frozen_bn='train' (the frozen part's BN statistics drifted "
                             "and are saved with it): open it with load_extractor(export, backend='torch', "
                             "frozen_bn='train')")
        raise InputError(f"{where} was learned with frozen_bn={recorded!r}, this extractor runs frozen_bn={have!r}: "
                         "open it with the extractor mode it was learned with")

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


STATE_KEYS = ("config", "tasks", "class_index", "current_task", "finished_tasks", "pending_capture", "counters",
              "metrics", "extra", "head", "memory", "optimizer", "rng", "frozen_statistics", "last_features")
# options that act only when a learner is made (its device stays; the state's seed and classifier reset are adopted)
INIT_ONLY_OPTIONS = ("device", "seed", "reset_classifier", "extract_budget")
OPTIONAL_STATE_KEYS = frozenset({"frozen_id", "frozen_bn", "loss_components", "optimizer_class", "class_map",
                                 "replay"})
INT64 = (-(1 << 63), (1 << 63) - 1)


def _int(v, where: str, lo: int = INT64[0], hi: int = INT64[1]) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise IntegrityError(f"{where} must be an integer in [{lo}, {hi}], got {str(v)[:40]!r}")
    return v


def _list(v, where: str) -> list:
    if not isinstance(v, list):
        raise IntegrityError(f"{where} must be a list, got {type(v).__name__}")
    return v


def _check_tasks(state: Mapping[str, Any], num_classes: int, where: str) -> tuple[dict[int, list[int]], dict[int, int]]:
    """The task/class bookkeeping of a state dict, checked: ``(tasks, class_index)``."""
    tasks: dict[int, list[int]] = {}
    for item in _list(state["tasks"], f"{where}: tasks"):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise IntegrityError(f"{where}: each task must be [task_id, [class, ...]]")
        t = _int(item[0], f"{where}: task id")
        if t in tasks:
            raise IntegrityError(f"{where}: task {t} listed twice")
        tasks[t] = [_int(c, f"{where}: class id of task {t}") for c in _list(item[1], f"{where}: classes of task {t}")]
    seen_classes = [c for cs in tasks.values() for c in cs]
    index: dict[int, int] = {}
    entries = _list(state["class_index"], f"{where}: class_index")
    for item in entries:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise IntegrityError(f"{where}: each class_index entry must be [class, index]")
        c = _int(item[0], f"{where}: class id")
        index[c] = _int(item[1], f"{where}: index of class {c}", 0, max(0, num_classes - 1))
    if len(set(index.values())) != len(index) or len(index) != len(entries):
        raise IntegrityError(f"{where}: class_index maps two classes to one output (or lists a class twice)")
    if not set(seen_classes) <= set(index) or any(len(set(cs)) != len(cs) for cs in tasks.values()):
        raise IntegrityError(f"{where}: the tasks' classes and class_index disagree")
    # (a class may belong to several tasks: it came back in a later lesson; ClassMap.from_state checks the rest)
    cur = state["current_task"]
    if cur is not None and _int(cur, f"{where}: current_task") not in tasks:
        raise IntegrityError(f"{where}: current_task {cur!r} is not a known task")
    fin = [_int(t, f"{where}: finished task") for t in _list(state["finished_tasks"], f"{where}: finished_tasks")]
    if len(set(fin)) != len(fin) or not set(fin) <= set(tasks):
        raise IntegrityError(f"{where}: finished_tasks must be distinct known tasks")
    return tasks, index
