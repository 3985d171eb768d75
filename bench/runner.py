"""Run a scenario's continual-learning stream through the engine: the body of ``lightcl learn``.

Per task: ``begin_task`` (buffer from a freshly drawn batch of the task, as the authors) -> epochs of
``observe`` on shuffled (optionally augmented) batches -> ``end_task`` (vital channels on a freshly
drawn full batch of the task, as the authors) -> evaluate every task seen so far (TIL and CIL from
one pass) -> save the state.
``resume`` continues after the last finished task; the shuffling RNG lives in the state, so a
resumed run reproduces an uninterrupted one.
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lightcl.data.datasets import load_dataset
from lightcl.data.tasks import TensorData, class_order, split_tasks
from lightcl.data.transforms import Preprocess
from lightcl.engine.errors import InputError, StateError
from lightcl.engine.learner import LightCL

from .meters import peak_mib
from .metrics import summarize
from .scenarios import Scenario

log = logging.getLogger("lightcl")


class ScenarioData:
    """The continual-learning dataset of a scenario, split into tasks, normalised like the backbone."""

    def __init__(self, scenario: Scenario, normalization: dict, data_path: str | None = None) -> None:
        self.scenario = scenario
        self.train = TensorData(load_dataset(scenario.cl_dataset, "train", data_path))
        self.test = TensorData(load_dataset(scenario.cl_dataset, "test", data_path))
        order = class_order(len(self.train.classes), scenario.class_order_seed)
        self.tasks = split_tasks(self.train.y.numpy(), self.test.y.numpy(), scenario.n_tasks,
                                 scenario.classes_per_task, order)
        mean, std = normalization["mean"], normalization["std"]
        self.pre_train = Preprocess(mean, std, crop_padding=4 if scenario.augment else 0)
        self.pre_eval = Preprocess(mean, std)

    def train_batches(self, task, generator: torch.Generator, with_index: bool = False):
        return self.train.batches(task.train_idx, self.scenario.batch_size, self.pre_train, train=True,
                                  shuffle=True, generator=generator, with_index=with_index)

    def fresh_batch(self, task, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A freshly shuffled full batch of the task's training data: the authors' ``next(iter(train_loader[task]))``,
        drawn for the buffer (before training) and for the vital channels (never the epoch's trailing remainder)."""
        return next(iter(self.train_batches(task, generator)))

    def test_stream(self, upto: int, batch_size: int = 256):
        return [(t.task_id, self.test.batches(t.test_idx, batch_size, self.pre_eval)) for t in self.tasks[:upto]]


def format_matrix(R: list[list[float]], title: str) -> str:
    head = f"{title:>8s} " + " ".join(f"  T{i:<3d}" for i in range(max((len(r) for r in R), default=0)))
    rows = [head]
    for t, r in enumerate(R):
        rows.append(f"{'after T' + str(t):>8s} " + " ".join(f"{100 * a:6.1f}" for a in r))
    return "\n".join(rows)


def learn_scenario(export_dir: str | Path, scenario: Scenario, state_dir: str | Path, backend: str = "auto",
                   resume: bool = False, learner_options: dict[str, Any] | None = None,
                   extractor_options: dict[str, Any] | None = None, data_path: str | None = None,
                   max_tasks: int | None = None, progress: bool = True,
                   echo: Callable[[str], None] = print) -> dict:
    """Learn ``scenario`` with the export in ``export_dir``; state saved to ``state_dir`` after each task."""
    from tqdm import tqdm

    from lightcl.engine.export_dir import load_export_meta, load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.state import check_state_path

    if max_tasks is not None and (isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 1):
        raise InputError(f"max_tasks must be a positive integer, got {max_tasks!r}")
    export_dir, state_dir = Path(export_dir), Path(state_dir)
    check_state_path(state_dir)  # before any work: a foreign directory at --state is refused, not replaced
    meta = load_export_meta(export_dir)
    extractor = load_extractor(export_dir, backend=backend, learning=True, **(extractor_options or {}))
    data = ScenarioData(scenario, meta["normalization"], data_path)
    n_classes = scenario.n_tasks * scenario.classes_per_task
    opts = {"num_classes": n_classes, **(learner_options or {})}
    if resume and (state_dir / "state.json").exists():
        learner = LightCL.load(state_dir, extractor)
        saved = learner.extra.get("scenario", {})
        if saved.get("name") != scenario.name:
            raise StateError(f"state {state_dir} belongs to scenario {saved.get('name')!r}, not {scenario.name!r}")
        echo(f"resuming {state_dir}: {len(learner.finished_tasks)} of {scenario.n_tasks} tasks done")
    else:
        if resume:
            echo(f"no state at {state_dir} yet: starting from task 0")
        learner = LightCL(extractor, load_head(export_dir), **opts)
        learner.extra.update(scenario=scenario.to_dict(), export_dir=str(export_dir.resolve()), backend=backend,
                             step_ms=[], wall_s=0.0)
    # which extractor really learns (auto: int8 where its agreement check passed), saved with the state
    learner.extra["extractor"] = {k: extractor.info().get(k) for k in ("backend", "file", "micro_batch")}
    start = len(learner.finished_tasks)
    stop = scenario.n_tasks if max_tasks is None else min(scenario.n_tasks, start + max_tasks)
    echo(f"extractor: {extractor.info()}")
    for task in data.tasks[start:stop]:
        t0 = time.perf_counter()
        learner.begin_task(task.task_id, task.classes, *data.fresh_batch(task, learner.generator))
        steps = scenario.epochs * int(np.ceil(len(task.train_idx) / scenario.batch_size))
        bar = tqdm(total=steps, desc=f"task {task.task_id + 1}/{scenario.n_tasks} classes {task.classes}",
                   unit="step", disable=not progress, leave=False)
        step_ms = []
        for _epoch in range(scenario.epochs):
            for x, y in data.train_batches(task, learner.generator):
                out = learner.observe(x, y)
                step_ms.append(out["step_ms"])
                bar.update(1)
                bar.set_postfix(ce=f"{out['ce']:.3f}", fp=f"{out['feature_pattern']:.4f}")
        bar.close()
        learner.end_task(data.fresh_batch(task, learner.generator)[0])
        learner.evaluate(data.test_stream(task.task_id + 1))
        learner.extra["step_ms"] = list(learner.extra.get("step_ms", [])) + [statistics.median(step_ms)]
        learner.extra["wall_s"] = float(learner.extra.get("wall_s", 0.0)) + time.perf_counter() - t0
        learner.save(state_dir)
        til, cil = learner.metrics["til"][-1], learner.metrics["cil"][-1]
        echo(f"task {task.task_id}: {time.perf_counter() - t0:.1f} s, median step {statistics.median(step_ms):.1f} ms; "
             f"TIL avg {100 * sum(til) / len(til):.1f}%  CIL avg {100 * sum(cil) / len(cil):.1f}%")
    R_til, R_cil = learner.metrics["til"], learner.metrics["cil"]
    if R_til:
        echo(format_matrix(R_til, "TIL %"))
        echo(format_matrix(R_cil, "CIL %"))
    result = {
        "scenario": scenario.to_dict(),
        "export_dir": str(export_dir),
        "state": str(state_dir),
        "backend": backend,
        "extractor": extractor.info(),
        "options": {k: v for k, v in vars(learner.config).items()},
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
    return result
