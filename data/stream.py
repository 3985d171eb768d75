"""One continual-learning stream loop, for every caller: ``lightcl learn`` (built-in scenarios and folder
lessons) and the benchmark suite's worker run :func:`run_stream`, so the order of lessons, epochs, batches,
task ends and evaluations is written once.

A stream is a list of lessons (:class:`~lightcl.data.tasks.Task`: a task id, its classes, the indices of its
train and test samples) over a :class:`StreamData` (the train and test images, normalised like the backbone).
What happens at each point of the loop belongs to an *agent* (:class:`StreamAgent`): the engine's
(:class:`LearnerAgent`: buffer from a fresh batch at ``begin``, the shuffling RNG of the learner, vital channels
from a fresh batch at ``end``, evaluation and a saved state after every lesson) or the benchmark's method agent
(bench/suite.py: its own RNGs and memory meters).
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from lightcl.engine.errors import InputError, StateError

from .datasets import load_dataset
from .scenarios import Scenario
from .tasks import Task, TensorData, class_order, split_tasks
from .transforms import Preprocess


class StreamData:
    """Train and test images of a stream, its lessons, batch size and preprocessing.

    ``label_names``: the name of each integer label of the data (a folder's class names); the learner then
    gets names (``"cup"``), not folder indices. None: the integer labels are the class names.
    ``normalization``: the export's ``meta`` (normalisation, input shape, channels, resize rule), or a bare
    ``{"mean", "std"}`` for the zoo's 32x32 RGB input.
    """

    def __init__(self, train: TensorData, test: TensorData, tasks: list[Task], batch_size: int, normalization: dict,
                 augment: bool = False, label_names: Sequence[str] | None = None) -> None:
        self.train, self.test, self.tasks, self.batch_size = train, test, list(tasks), int(batch_size)
        self.label_names = None if label_names is None else list(label_names)
        pad = 4 if augment else 0
        if "normalization" in normalization:  # an export's meta: its input shape, channels and resize rule too
            self.pre_train = Preprocess.from_meta(normalization, crop_padding=pad)
            self.pre_eval = Preprocess.from_meta(normalization)
        else:  # a bare {"mean", "std"}: the zoo's 32x32 RGB
            mean, std = normalization["mean"], normalization["std"]
            self.pre_train = Preprocess(mean, std, crop_padding=pad)
            self.pre_eval = Preprocess(mean, std)

    def names(self, labels):
        """The learner's labels for integer data labels: themselves, or their names."""
        if self.label_names is None:
            return labels
        return [self.label_names[i] for i in labels.tolist()]

    def lesson_classes(self, task: Task) -> list:
        return list(task.classes) if self.label_names is None else [self.label_names[c] for c in task.classes]

    def train_batches(self, task: Task, generator: torch.Generator, with_index: bool = False):
        return self.train.batches(task.train_idx, self.batch_size, self.pre_train, train=True,
                                  shuffle=True, generator=generator, with_index=with_index)

    def fresh_batch(self, task: Task, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A freshly shuffled full batch of the task's training data: the authors' ``next(iter(train_loader[task]))``,
        drawn for the buffer (before training) and for the vital channels (never the epoch's trailing remainder)."""
        return next(iter(self.train_batches(task, generator)))

    def test_stream(self, upto: int, batch_size: int = 256, named: bool = False):
        """(task id, batches of (x, y)) of the first ``upto`` lessons; ``named``: y as the learner's labels."""
        def batches(t: Task):
            for x, y in self.test.batches(t.test_idx, batch_size, self.pre_eval):
                yield x, (self.names(y) if named else y)

        return [(t.task_id, batches(t) if named else self.test.batches(t.test_idx, batch_size, self.pre_eval))
                for t in self.tasks[:upto]]


class ScenarioData(StreamData):
    """The continual-learning dataset of a built-in scenario, split into tasks, normalised like the backbone."""

    def __init__(self, scenario: Scenario, normalization: dict, data_path: str | None = None) -> None:
        self.scenario = scenario
        train = TensorData(load_dataset(scenario.cl_dataset, "train", data_path))
        test = TensorData(load_dataset(scenario.cl_dataset, "test", data_path))
        order = class_order(len(train.classes), scenario.class_order_seed)
        tasks = split_tasks(train.y.numpy(), test.y.numpy(), scenario.n_tasks, scenario.classes_per_task, order)
        if scenario.blurry:  # a task-free stream: part of each task's samples moved to the others (data/blurry.py)
            from .blurry import blur_tasks

            tasks = blur_tasks(tasks, scenario.blurry, seed=0)
        super().__init__(train, test, tasks, scenario.batch_size, normalization, augment=scenario.augment)


def parse_lessons(text: str) -> list[list[str]]:
    """``"cup,ball/cat,dog"`` -> ``[["cup", "ball"], ["cat", "dog"]]`` (lessons split by ``/``, classes by ``,``)."""
    lessons = [[c.strip() for c in part.split(",")] for part in str(text).split("/")]
    if not lessons or any(not ls or any(not c for c in ls) for ls in lessons):
        raise InputError(f"--lessons {text!r}: write lessons as cup,ball/cat,dog (no empty lesson or class)")
    for ls in lessons:
        if len(set(ls)) != len(ls):
            raise InputError(f"--lessons: lesson {','.join(ls)} names a class twice")
    return lessons


def folder_data(path: str | Path, lessons: list[list[str]], meta: dict, batch_size: int = 32,
                test_fraction: float = 0.2) -> StreamData:
    """Lessons from a class-per-subfolder image folder: ``path/train`` + ``path/test`` where both exist, else a
    seeded stratified ``test_fraction`` of each class is held out for testing. Images are brought to the export's
    input shape by its resize rule (``meta``)."""
    from .datasets import load_folder

    shape, resize = [int(v) for v in meta["input_shape"][-3:]], meta.get("resize")
    if not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    train_ds = load_folder(path, "train", size=shape[1:], test_fraction=test_fraction, resize=resize)
    test_ds = load_folder(path, "test", size=shape[1:], test_fraction=test_fraction, resize=resize)
    classes = list(train_ds.classes)
    unknown = [n for ls in lessons for n in ls if n not in classes]
    if unknown:
        raise InputError(f"--lessons name {', '.join(sorted(set(unknown))[:5])}, which {path} has no class folder "
                         f"for; its classes: {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}")
    train, test = TensorData(train_ds, shape, resize), TensorData(test_ds, shape, resize)
    ytr, yte = train.y.numpy(), test.y.numpy()
    tasks = []
    for t, names in enumerate(lessons):
        ids = [classes.index(n) for n in names]
        empty = [n for n, i in zip(names, ids) if not (ytr == i).any()]
        if empty:
            raise InputError(f"class {empty[0]!r} has no training images in {path}")
        tasks.append(Task(t, ids, np.flatnonzero(np.isin(ytr, ids)), np.flatnonzero(np.isin(yte, ids))))
    return StreamData(train, test, tasks, batch_size, meta, augment=False, label_names=classes)


# ---------------------------------------------------------------------------------------------- the loop
class StreamAgent:
    """What :func:`run_stream` drives; each hook gets the lesson (a :class:`~lightcl.data.tasks.Task`)."""

    def begin(self, lesson: Task) -> None:
        raise NotImplementedError

    def batches(self, lesson: Task) -> Iterable:
        raise NotImplementedError

    def observe(self, batch) -> None:
        raise NotImplementedError

    def end(self, lesson: Task) -> None:
        raise NotImplementedError

    def after(self, lesson: Task) -> None:
        """Evaluate, save, report: after the lesson is closed."""


def run_stream(lessons: Sequence[Task], agent: StreamAgent, epochs: int) -> None:
    """The continual-learning loop: per lesson ``begin`` -> ``epochs`` passes of ``observe`` over ``batches`` ->
    ``end`` -> ``after``."""
    for lesson in lessons:
        agent.begin(lesson)
        for _epoch in range(epochs):
            for batch in agent.batches(lesson):
                agent.observe(batch)
        agent.end(lesson)
        agent.after(lesson)


class LearnerAgent(StreamAgent):
    """The engine on a stream (``lightcl learn``): the buffer from a freshly drawn batch before training, batches
    shuffled by the learner's own RNG (saved in the state: a resumed run reproduces an uninterrupted one), vital
    channels from a freshly drawn full batch, TIL/CIL on every lesson so far, the state saved after each lesson."""

    def __init__(self, learner, data: StreamData, epochs: int, state_dir: Path, n_tasks: int, progress: bool = True,
                 echo: Callable[[str], None] = print) -> None:
        self.learner, self.data, self.epochs, self.state_dir = learner, data, epochs, state_dir
        self.n_tasks, self.progress, self.echo = n_tasks, progress, echo
        self.bar = None

    def begin(self, lesson: Task) -> None:
        from tqdm import tqdm

        self.t0 = time.perf_counter()
        self.step_ms: list[float] = []
        x, y = self.data.fresh_batch(lesson, self.learner.generator)
        classes = self.data.lesson_classes(lesson)
        self.learner.begin_task(lesson.task_id, classes, x, self.data.names(y))
        steps = self.epochs * int(np.ceil(len(lesson.train_idx) / self.data.batch_size))
        self.bar = tqdm(total=steps, desc=f"task {lesson.task_id + 1}/{self.n_tasks} classes {classes}",
                        unit="step", disable=not self.progress, leave=False)

    def batches(self, lesson: Task):
        return self.data.train_batches(lesson, self.learner.generator)

    def observe(self, batch) -> None:
        x, y = batch
        out = self.learner.observe(x, self.data.names(y))
        self.step_ms.append(out["step_ms"])
        self.bar.update(1)
        self.bar.set_postfix(ce=f"{out['ce']:.3f}", fp=f"{out['feature_pattern']:.4f}")

    def end(self, lesson: Task) -> None:
        self.bar.close()
        self.learner.end_task(self.data.fresh_batch(lesson, self.learner.generator)[0])

    def after(self, lesson: Task) -> None:
        learner = self.learner
        learner.evaluate(self.data.test_stream(lesson.task_id + 1, named=self.data.label_names is not None))
        learner.extra["step_ms"] = list(learner.extra.get("step_ms", [])) + [statistics.median(self.step_ms)]
        learner.extra["wall_s"] = float(learner.extra.get("wall_s", 0.0)) + time.perf_counter() - self.t0
        learner.save(self.state_dir)
        til, cil = learner.metrics["til"][-1], learner.metrics["cil"][-1]
        self.echo(f"task {lesson.task_id}: {time.perf_counter() - self.t0:.1f} s, median step "
                  f"{statistics.median(self.step_ms):.1f} ms; TIL avg {100 * sum(til) / len(til):.1f}%  "
                  f"CIL avg {100 * sum(cil) / len(cil):.1f}%")


def format_matrix(R: list[list[float]], title: str) -> str:
    head = f"{title:>8s} " + " ".join(f"  T{i:<3d}" for i in range(max((len(r) for r in R), default=0)))
    rows = [head]
    for t, r in enumerate(R):
        rows.append(f"{'after T' + str(t):>8s} " + " ".join(f"{100 * a:6.1f}" for a in r))
    return "\n".join(rows)


def learn_stream(export_dir: str | Path, data: StreamData | Callable[[dict], StreamData], state_dir: str | Path, *,
                 identity: dict[str, Any], epochs: int, backend: str = "auto", resume: bool = False,
                 learner_options: dict[str, Any] | None = None, extractor_options: dict[str, Any] | None = None,
                 max_tasks: int | None = None, progress: bool = True,
                 echo: Callable[[str], None] = print) -> dict:
    """Learn the lessons of ``data`` (or ``data(meta)``: built from the export's meta) with the export in
    ``export_dir``; the state is saved to ``state_dir`` after each lesson.

    ``identity``: ``{key: value}`` saved in the state's ``extra`` (``{"scenario": {...}}`` or
    ``{"lessons": {...}}``) and checked on ``resume`` by :func:`check_resume`. An existing state without
    ``resume`` is refused, never overwritten.
    """
    from lightcl.engine.export_dir import load_export_meta, load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL
    from lightcl.engine.metrics import summarize
    from lightcl.engine.rss import peak_mib
    from lightcl.engine.state import check_state_path

    if max_tasks is not None and (isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 1):
        raise InputError(f"max_tasks must be a positive integer, got {max_tasks!r}")
    export_dir, state_dir = Path(export_dir), Path(state_dir)
    check_state_path(state_dir)  # before any work: a foreign directory at --state is refused, not replaced
    exists = (state_dir / "state.json").exists()
    if exists and not resume:
        raise StateError(f"{state_dir} already holds a learner state: pass --resume to continue it, or choose "
                         "another --state (it is never overwritten)")
    meta = load_export_meta(export_dir)
    # learning=True: with backend "auto", the fastest extractor whose agreement check passed (int8 where it did)
    extractor = load_extractor(export_dir, backend=backend, learning=True, **(extractor_options or {}))
    data = data if isinstance(data, StreamData) else data(meta)
    n_tasks = len(data.tasks)
    if resume and exists:
        learner = LightCL.load(state_dir, extractor)
        check_resume(learner.extra, identity, state_dir)
        check_runner_fields(learner, n_tasks, str(state_dir))  # the loop's own fields, before any work
        echo(f"resuming {state_dir}: {len(learner.finished_tasks)} of {n_tasks} tasks done")
    else:
        if resume:
            echo(f"no state at {state_dir} yet: starting from task 0")
        learner = LightCL(extractor, load_head(export_dir), **(learner_options or {}))
        learner.extra.update(export_dir=str(export_dir.resolve()), backend=backend, step_ms=[], wall_s=0.0)
    learner.extra.update(identity)
    # which extractor really learns (auto: int8 where its agreement check passed), saved with the state
    learner.extra["extractor"] = {k: extractor.info().get(k) for k in ("backend", "file", "micro_batch")}
    start = len(learner.finished_tasks)
    stop = n_tasks if max_tasks is None else min(n_tasks, start + max_tasks)
    echo(f"extractor: {extractor.info()}")
    run_stream(data.tasks[start:stop], LearnerAgent(learner, data, epochs, state_dir, n_tasks, progress, echo), epochs)
    R_til, R_cil = learner.metrics["til"], learner.metrics["cil"]
    if R_til:
        echo(format_matrix(R_til, "TIL %"))
        echo(format_matrix(R_cil, "CIL %"))
    return {
        **identity,
        "export_dir": str(export_dir),
        "state": str(state_dir),
        "backend": backend,
        "extractor": extractor.info(),
        "options": {k: v for k, v in vars(learner.config).items()},
        "classes": learner.class_names(),
        "tasks_done": len(learner.finished_tasks),
        "til": R_til,
        "cil": R_cil,
        **summarize(R_til, R_cil),
        "step_ms": statistics.median(learner.extra["step_ms"]) if learner.extra.get("step_ms") else None,
        "step_ms_per_task": learner.extra.get("step_ms", []),
        "wall_s": learner.extra.get("wall_s"),
        "peak_rss_mib": peak_mib(),
        "memory": learner.memory_report(),
        "counters": dict(learner.counters),
    }


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


def check_runner_fields(learner, n_tasks: int, where: str) -> None:
    """Refuse (one :class:`StateError` line) a state whose loop fields this loop cannot continue from: a re-signed
    ``state.json`` with a string ``wall_s`` or ragged metrics used to end in a traceback. ``load_state_dict`` has
    checked every field's type; here: what only this loop writes and the shape it gives the accuracy matrices."""
    extra = learner.extra
    done = len(learner.finished_tasks)
    if done > n_tasks:
        raise StateError(f"state {where} has {done} finished tasks; the stream has {n_tasks}")
    if learner.current_task is not None:
        raise StateError(f"state {where} has task {learner.current_task} open: `lightcl learn` saves between tasks only")
    step_ms, wall_s = extra.get("step_ms", []), extra.get("wall_s", 0.0)
    if not isinstance(step_ms, list) or len(step_ms) != done or not all(_number(v) for v in step_ms):
        raise StateError(f"state {where}: extra.step_ms must be one non-negative number per finished task ({done})")
    if not _number(wall_s):
        raise StateError(f"state {where}: extra.wall_s must be a non-negative number of seconds")
    for key in ("til", "cil"):
        rows = learner.metrics[key]
        if len(rows) != done or any(len(r) != t + 1 for t, r in enumerate(rows)):
            raise StateError(f"state {where}: metrics.{key} must hold one row per finished task, row t covering "
                             f"tasks 0..t ({done} tasks finished)")


def check_resume(extra: dict, identity: dict[str, Any], state_dir: Path) -> None:
    """A state continues only the stream it was learned on: the same scenario, or lessons that begin with the
    state's lessons (new lessons may follow: a class may come back in a later lesson)."""
    if "scenario" in identity:
        saved = extra.get("scenario")
        want = identity["scenario"]["name"]
        if not isinstance(saved, dict) or not isinstance(saved.get("name"), str):
            raise StateError(f"state {state_dir}: extra.scenario must be the scenario it was learned on (an object "
                             "with a name); it is not a state `lightcl learn` wrote")
        if saved["name"] != want:
            raise StateError(f"state {state_dir} belongs to scenario {saved['name'][:80]!r}, not {want!r}")
        return
    saved = extra.get("lessons")
    want = identity["lessons"]
    if not isinstance(saved, dict) or not isinstance(saved.get("lessons"), list):
        raise StateError(f"state {state_dir} was not learned from folder lessons: resume it the way it was made")
    if want["lessons"][:len(saved["lessons"])] != saved["lessons"]:
        raise StateError(f"state {state_dir} was learned with --lessons "
                         f"{'/'.join(','.join(ls) for ls in saved['lessons'])}: the lessons given must begin with "
                         "those (new lessons may follow)")


def learn_scenario(export_dir: str | Path, scenario: Scenario, state_dir: str | Path, backend: str = "auto",
                   resume: bool = False, learner_options: dict[str, Any] | None = None,
                   extractor_options: dict[str, Any] | None = None, data_path: str | None = None,
                   max_tasks: int | None = None, progress: bool = True,
                   echo: Callable[[str], None] = print) -> dict:
    """Learn a built-in ``scenario`` (its fixed classifier of n_tasks x classes_per_task outputs unless the
    options say otherwise) with the export in ``export_dir``; state saved to ``state_dir`` after each task."""
    opts = {"num_classes": scenario.n_tasks * scenario.classes_per_task, **(learner_options or {})}
    return learn_stream(export_dir, lambda meta: ScenarioData(scenario, meta, data_path), state_dir,
                        identity={"scenario": scenario.to_dict()}, epochs=scenario.epochs, backend=backend,
                        resume=resume, learner_options=opts, extractor_options=extractor_options,
                        max_tasks=max_tasks, progress=progress, echo=echo)


def learn_folder(export_dir: str | Path, images: str | Path, lessons: list[list[str]], state_dir: str | Path, *,
                 epochs: int = 1, batch_size: int = 32, test_fraction: float = 0.2, backend: str = "auto",
                 resume: bool = False, learner_options: dict[str, Any] | None = None,
                 extractor_options: dict[str, Any] | None = None, max_tasks: int | None = None,
                 progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Learn named ``lessons`` (lists of class-folder names) from the image folder ``images``; the classifier
    grows as lessons bring classes (``num_classes=None``)."""
    opts = {"num_classes": None, **(learner_options or {})}
    identity = {"lessons": {"images": str(Path(images).resolve()), "lessons": [list(ls) for ls in lessons],
                            "epochs": int(epochs), "batch_size": int(batch_size)}}

    def data(meta: dict) -> StreamData:
        return folder_data(images, lessons, meta, batch_size, test_fraction)

    return learn_stream(export_dir, data, state_dir, identity=identity, epochs=epochs, backend=backend,
                        resume=resume, learner_options=opts, extractor_options=extractor_options,
                        max_tasks=max_tasks, progress=progress, echo=echo)
