"""``lightcl bench --suite NAME``: every method x every seed on one scenario, measured alike.

One loop drives every method (``bench/methods``: ``begin_task`` / ``observe`` / ``end_task`` /
``logits``). Same pretrained start (the scenario's cached checkpoint, ``pipeline.ensure_backbone``;
LightCL and latent replay run its split export), same data order (``ScenarioData`` batches drawn
with a generator seeded by the run's seed, separate from every method's own randomness), TIL and
CIL from one set of logits by masking.

Each method-seed runs in its own subprocess (:func:`lightcl.bench.worker.run_worker` on
:func:`run_one`), so its *measured* memory is its own:

* ``peak_rss_delta_mib``: the peak resident set size while *training* (Linux ``VmHWM``, reset
  through ``/proc/self/clear_refs`` after the method is built and after each evaluation) minus the
  RSS of the idle worker (interpreter, libraries including onnxruntime, and the scenario's uint8
  dataset loaded, nothing of the method built). Evaluation passes are not training and are left out of it;
  ``peak_rss_total_delta_mib`` is the whole run's peak (``ru_maxrss``) minus the same idle RSS.
  CUDA runs also report ``torch.cuda.max_memory_allocated``.
* ``theoretical_mib``: the paper's accounting, fp32: weights held + gradients of the trainable
  weights + optimiser state + extra state (EWC's Fisher and anchor, LwF's teacher) + activations of
  one step (leaf-module outputs for batch 32 + the replayed samples, ``bench.accounting``) + buffer.
* ``train_flops``: by the paper's counting, see ``bench/methods/base.py`` (1x forward FLOPs for a
  frozen pass, 3x for a trained pass; conv + linear only).
* ``step_ms``: median wall time of ``observe`` (one update step, batch + replay); ``wall_s``: the
  whole run (build, train, evaluate).
"""
from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .meters import malloc_trim, peak_mib, reset_peak, rss_mib, warm_up
from .worker import PROGRESS, _json_default  # noqa: F401  (PROGRESS: the worker protocol, kept importable here)

# Per-suite defaults. smoke: 1 epoch per task for every method (the scenario says 3) and 1 seed, so
# `lightcl bench --suite smoke` stays well under CI's 3 minutes on 2 cores.
SUITE_DEFAULTS: dict[str, dict[str, Any]] = {
    "smoke": {"epochs": 1, "seeds": 1},
    "offline": {"seeds": 3},
    "offline-hard": {"seeds": 3},
    "offline-val": {"seeds": 1},
    "offline-val-novel": {"seeds": 1},
    "offline-blurry": {"seeds": 3},
    "smoke-blurry": {"epochs": 1, "seeds": 1},
    "paper-cifar10": {"seeds": 3},
    "paper-tinyimg": {"seeds": 3},
}
PAPER_SUITES = ("paper-cifar10", "paper-tinyimg")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MIB = 2.0 ** 20


# --------------------------------------------------------------------------- configs
def config_path(method: str, config_dir: str | Path | None = None) -> Path:
    """Where ``method``'s JSON config is: ``config_dir`` may be a directory of ``METHOD.json`` files or one
    ``METHOD.json`` file (a user's ``--method-config``); a method it does not cover keeps the cited config."""
    if config_dir is not None:
        p = Path(config_dir)
        if p.is_dir() and (p / f"{method}.json").is_file():
            return p / f"{method}.json"
        if p.is_file() and p.name == f"{method}.json":
            return p
    return CONFIG_DIR / f"{method}.json"


def check_method_config(config_dir: str | Path) -> None:
    """A user's ``--method-config`` (file or directory): exists, is JSON, names known methods and only their
    typed configs' keys; anything else is one :class:`InputError` line, before any work."""
    from lightcl.bench.methods import REGISTRY
    from lightcl.engine.errors import InputError

    p = Path(config_dir)
    if p.is_dir():
        files = sorted(p.glob("*.json"))
        if not files:
            raise InputError(f"--method-config {p}: no METHOD.json files in this directory")
    elif os.path.lexists(p):  # a file, or a FIFO/link/device that _read_config refuses in one line
        files = [p]
    else:
        raise InputError(f"--method-config {p}: no such file or directory")
    for f in files:
        if f.stem not in REGISTRY:
            raise InputError(f"--method-config {f}: {f.stem!r} is not a method (name the file METHOD.json; "
                             f"known: {', '.join(REGISTRY)})")
        _read_config(f, f.stem)


def _read_config(path: Path, method: str) -> tuple[bytes, dict]:
    """The config file's bytes and document, its keys checked against the method's typed config."""
    from lightcl.bench.methods import config_class
    from lightcl.bench.methods.configs import field_names, make_config, unknown_keys
    from lightcl.engine.errors import InputError, StateError

    from lightcl.engine.fileio import MAX_JSON_BYTES, loads_json, open_regular

    from .config_check import check_config, check_document

    if not os.path.lexists(path):
        raise StateError(f"no config for method {method!r}: {path} is missing")
    with open_regular(path, "method config", max_bytes=MAX_JSON_BYTES, error=InputError) as f:
        raw = f.read(MAX_JSON_BYTES + 1)  # bounded: the file may grow between fstat and read
    if len(raw) > MAX_JSON_BYTES:
        raise InputError(f"{path}: more than {MAX_JSON_BYTES} bytes; a method config is a few hundred")
    doc = loads_json(raw, str(path), error=InputError)  # bad JSON, nesting, huge integers: one line
    if not isinstance(doc, dict) or not isinstance(doc.get("default", {}), dict) \
            or not isinstance(doc.get("scenarios", {}), dict):
        raise InputError(f"{path}: expected {{\"default\": {{...}}, \"scenarios\": {{NAME: {{...}}}}}}")
    if doc.get("method", method) != method:
        raise InputError(f"{path}: says method {str(doc.get('method'))[:40]!r}, expected {method!r}")
    check_document(path, doc)
    parts = [("default", doc.get("default", {}))] + [
        (f"scenarios.{k}", {kk: vv for kk, vv in v.items() if kk != "source"} if isinstance(v, dict) else v)
        for k, v in doc.get("scenarios", {}).items()]
    for where, hp in parts:
        if not isinstance(hp, dict):
            raise InputError(f"{path}: {where} must be an object of hyperparameters")
        cls = config_class(method)
        bad = unknown_keys(cls, hp)
        if bad:
            raise InputError(f"{path}: unknown hyperparameter(s) {bad} for {method} in {where}; "
                             f"known: {sorted(field_names(cls))}")
        try:  # a value of the wrong type or out of range: one line here, not in a worker
            check_config(method, make_config(method, hp, cls=cls))
        except InputError as e:
            raise InputError(f"{path}: {where}: {e}") from None
    return raw, doc


def load_config(method: str, scenario: str, config_dir: str | Path | None = None) -> dict:
    """Hyperparameters of ``method`` for ``scenario``: the file's default, then the scenario's entry.

    The values the file does not set are the typed config's defaults (``Method.config_class``);
    every key is checked against that config (an unknown key is one line). A method without a
    ``bench/configs/METHOD.json`` (one of your own, docs/extending.md) runs on its config's defaults, and
    the source says so; the benchmark's own methods each cite theirs (tests/test_method_configs.py).
    """
    path = config_path(method, config_dir)
    if path.parent == CONFIG_DIR and not path.is_file():
        from lightcl.bench.methods import config_class

        cls = config_class(method)
        doc_line = (cls.__doc__ or "").strip().splitlines()[0] if (cls.__doc__ or "").strip() else ""
        return {"hyperparameters": {}, "source": f"{cls.__name__} defaults (no bench/configs/{method}.json)"
                + (f": {doc_line}" if doc_line else ""), "file": None, "version": None, "sha256": None}
    raw, doc = _read_config(path, method)
    hp = dict(doc.get("default", {}))
    source = doc.get("source", "")
    entry = dict(doc.get("scenarios", {}).get(scenario, {}))
    if entry:
        source = entry.pop("source", source)
        hp.update(entry)
    return {"hyperparameters": hp, "source": source, "file": path.name, "version": doc.get("version"),
            "sha256": hashlib.sha256(raw).hexdigest()}


# --------------------------------------------------------------------------- the one loop
def evaluate(method, stream) -> tuple[list[float], list[float]]:
    """Accuracy per task seen so far: TIL (argmax inside the task's outputs) and CIL (over all seen), counted
    by the engine's rule (:func:`lightcl.engine.metrics.count_correct`)."""
    import torch

    from lightcl.engine.metrics import count_correct

    til, cil = [], []
    with torch.no_grad():
        for task_id, batches in stream:
            tidx = method.task_indices(task_id)
            sidx = method.seen_indices()
            n = ct = cc = 0
            for x, y in batches:
                t, c = count_correct(method.logits(x).detach().cpu(), method.to_index(y).cpu(), tidx, sidx)
                ct += t
                cc += c
                n += len(y)
            til.append(ct / max(1, n))
            cil.append(cc / max(1, n))
    return til, cil


def _frozen_figures(ckpt: str, split: str, input_shape) -> dict:
    import torch

    from lightcl.bench.methods.base import forward_flops
    from lightcl.export.checkpoint import load_checkpoint
    from lightcl.export.zoo import FrozenPart, split_index

    model, _ = load_checkpoint(ckpt)
    k = split_index(model, split)
    frozen = FrozenPart(model.block_names[: k + 1], list(model.blocks[: k + 1]))
    out = {"frozen_params": int(sum(p.numel() for p in frozen.parameters())),
           "frozen_flops": forward_flops(frozen, torch.zeros(2, *input_shape)), "split_index": k}
    del model, frozen
    return out


def fresh_generator(seed: int):
    """The generator of the fresh end-of-task batches: its own stream (seed + FRESH_SEED_OFFSET), so drawing
    them leaves the training data order, which every method shares, untouched."""
    import torch

    return torch.Generator().manual_seed(int(seed) + FRESH_SEED_OFFSET)


FRESH_SEED_OFFSET = 1_000_003
# what the executors run in each worker process (named here, so bench/executors.py imports nothing of this module)
RUN_ONE = "lightcl.bench.suite:run_one"


class MethodAgent:
    """A benchmark method on the stream loop (:func:`lightcl.data.stream.run_stream`): batches in the seed's data
    order (shared by every method), a fresh end-of-task batch from its own generator for methods that take one,
    step times, and the memory meters around training and evaluation."""

    def __init__(self, method, data, data_gen, fresh_gen, eval_batch: int, progress=None) -> None:
        self.method, self.data, self.data_gen, self.fresh_gen = method, data, data_gen, fresh_gen
        self.eval_batch, self.progress = eval_batch, progress
        self.wants_ids = bool(method.wants_ids)
        self.step_ms: list[float] = []
        self.train_s = 0.0
        self.R_til: list[list[float]] = []
        self.R_cil: list[list[float]] = []
        self.train_peak = self.total_peak = 0.0

    def begin(self, task) -> None:
        self.t0 = time.perf_counter()
        self.method.begin_task(task.task_id, task.classes, n_train=len(task.train_idx))

    def batches(self, task):
        return self.data.train_batches(task, self.data_gen, with_index=self.wants_ids)

    def observe(self, batch) -> None:
        ts = time.perf_counter()
        self.method.observe(*batch)  # (x, y), or (x, y, dataset indices) for methods that want them
        self.step_ms.append((time.perf_counter() - ts) * 1000.0)
        if self.progress:
            self.progress(1)

    def end(self, task) -> None:
        if self.fresh_gen is not None:  # a freshly drawn full batch of the task for the vital channels, as `lightcl learn`
            self.method.end_task(self.data.fresh_batch(task, self.fresh_gen)[0])
        else:
            self.method.end_task()
        self.train_s += time.perf_counter() - self.t0
        self.train_peak = max(self.train_peak, peak_mib())

    def after(self, task) -> None:
        # evaluation in batches of the training size: no allocator arena grows beyond what training needs
        til, cil = evaluate(self.method, self.data.test_stream(task.task_id + 1, batch_size=self.eval_batch))
        self.R_til.append(til)
        self.R_cil.append(cil)
        self.total_peak = max(self.total_peak, self.train_peak, peak_mib())
        gc.collect()
        malloc_trim()  # what evaluation freed must not sit in the next task's training peak
        reset_peak()


def run_one(spec: dict, progress: Callable[[int], None] | None = None) -> dict:
    """One method, one seed, in this process. ``spec``: see :func:`run_suite`."""
    import numpy as np
    import torch

    from lightcl.bench.methods import create_method, method_class
    from lightcl.bench.methods.base import MethodContext
    from lightcl.bench.metrics import summarize
    from lightcl.bench.scenarios import Scenario
    from lightcl.data.stream import ScenarioData, run_stream
    from lightcl.engine.export_dir import load_export_meta

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    scenario = Scenario(**spec["scenario"])
    meta = load_export_meta(spec["export_dir"], verify=False)
    input_shape = tuple(int(v) for v in meta["input_shape"][-3:])
    data = ScenarioData(scenario, meta, spec.get("data_path"))
    n_classes = scenario.n_tasks * scenario.classes_per_task
    figures = spec.get("frozen") or _frozen_figures(spec["ckpt"], scenario.split, input_shape)
    ctx = MethodContext(scenario=scenario, ckpt=spec["ckpt"], export_dir=spec["export_dir"], num_classes=n_classes,
                        seed=int(spec["seed"]), input_shape=input_shape, backend=spec.get("backend", "ort"),
                        threads=spec.get("threads"), device=spec.get("device", "cpu"), extra=figures)
    cuda = ctx.device.startswith("cuda")
    # libraries belong to the idle process for every method alike (onnxruntime is imported lazily),
    # and so do the library code pages a first conv/BN/linear step faults in
    method_class(spec["method"])
    warm_up(input_shape)
    gc.collect()
    malloc_trim()
    idle = rss_mib()
    can_reset = reset_peak()
    t_start = time.perf_counter()
    method = create_method(spec["method"], ctx, **spec["hyperparameters"])
    gc.collect()
    malloc_trim()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    data_gen = torch.Generator().manual_seed(int(spec["seed"]))
    # the engine methods and the authors' procedure declare it: vital channels from a freshly drawn full
    # batch of the task, as ``lightcl learn`` and the authors' code
    fresh = bool(method.wants_fresh_batch)
    fresh_gen = fresh_generator(int(spec["seed"])) if fresh else None
    train_peak = rss_mib()
    total_peak = max(peak_mib(), train_peak)  # the build's peak
    reset_peak()
    agent = MethodAgent(method, data, data_gen, fresh_gen, scenario.batch_size, progress)
    agent.train_peak, agent.total_peak = train_peak, total_peak
    run_stream(data.tasks, agent, scenario.epochs)  # the one loop `lightcl learn` runs too
    step_ms, train_s, R_til, R_cil = agent.step_ms, agent.train_s, agent.R_til, agent.R_cil
    train_peak, total_peak = agent.train_peak, agent.total_peak
    wall = time.perf_counter() - t_start
    til_only = bool(method.til_only)
    acc = method.accounting()
    from lightcl.bench.accounting import theoretical_mib

    theo = theoretical_mib(acc["weights"] + acc["extra_state"] + acc["buffer"], acc["trainable"], acc["activations"],
                           acc["optimizer_slots"])
    if not can_reset:  # no VmHWM reset: the process peak is all we know
        total_peak = max(total_peak, peak_mib())
    steps = np.array(step_ms) if step_ms else np.zeros(1)
    rec = {
        "method": spec["method"], "seed": int(spec["seed"]), "status": "ok",
        **summarize(R_til, None if til_only else R_cil),  # task-incremental-only methods: CIL "n/a" (None)
        "til": R_til, "cil": None if til_only else R_cil, "cil_applicable": not til_only,
        "theoretical_mib": theo, "theoretical": acc,
        "peak_rss_delta_mib": train_peak - idle, "peak_rss_mib": train_peak, "idle_rss_mib": idle,
        "peak_rss_total_delta_mib": total_peak - idle, "peak_reset_supported": can_reset,
        "cuda_max_allocated_mib": (torch.cuda.max_memory_allocated() / MIB) if cuda else None,
        "train_flops": float(method.flops), "steps": len(step_ms),
        "step_ms": float(np.median(steps)), "step_ms_p90": float(np.percentile(steps, 90)),
        "step_ms_mean": float(steps.mean()),
        "train_s": train_s, "wall_s": wall, "epochs": scenario.epochs, "batch_size": scenario.batch_size,
        "buffer_size": spec["hyperparameters"].get("buffer_size"),
        "hyperparameters": spec["hyperparameters"], "config": spec.get("config", {}),
        "describe": method.describe(), "threads": torch.get_num_threads(),
    }
    return rec


# --------------------------------------------------------------------------- worker process
# --------------------------------------------------------------------------- records on disk (resume)
from .records import RECORDS_DIR, record_path  # noqa: E402,F401  (records on disk: bench/records.py)


def run_key(spec: dict) -> str:
    """sha256 of a run's whole spec: a record is reused only for exactly the run that made it."""
    blob = json.dumps(spec, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()


def load_finished(out: str | Path, spec: dict, echo: Callable[[str], None] | None = None) -> dict | None:
    """The finished record of this exact run in ``out/records``, or None (absent, failed, other spec, or not
    trusted: ``bench.records`` reads it like every other lightcl file and ``echo`` is told why)."""
    from .records import load_finished as _load

    return _load(out, spec, run_key(spec), echo)


# --------------------------------------------------------------------------- orchestration
def _steps_per_run(scenario, data_sizes: list[int]) -> int:
    return sum(scenario.epochs * math.ceil(n / scenario.batch_size) for n in data_sizes)


def run_suite(suite: str, out: str | Path, methods: str | list[str] | None = None, seeds: int | None = None,
              epochs: int | None = None, buffer: int | None = None, threads: int | None = 1, backend: str = "ort",
              device: str = "cpu", data_path: str | None = None, config_dir: str | Path | None = None,
              progress: bool = True, plots: bool = True, command: str | None = None,
              echo: Callable[[str], None] = print, executor: str = "local", address: str | None = None,
              resume: bool = True, method_config: str | Path | None = None) -> dict:
    """Run the suite; write ``out/results.json``, ``results.csv``, ``report.md`` and plots. Returns the results.

    ``executor``: ``local`` (one run after another here) or ``ray`` (Ray tasks; ``address`` of an existing
    cluster, or a local instance). Every finished run's record is written to ``out/records/`` as it
    completes; with ``resume`` a restarted suite reuses the records whose run spec is unchanged.
    ``method_config``: a user's ``METHOD.json`` (or a directory of them) in the cited configs' format,
    used instead of ``bench/configs/METHOD.json`` for the methods it covers (same as ``config_dir``).
    """
    from lightcl.bench.methods import method_class
    from lightcl.bench.report import write_all
    from lightcl.engine.outpath import check_output_dir

    scenario, seeds, names, config_dir = _check_request(suite, methods, seeds, epochs, buffer, executor, address,
                                                        config_dir, method_config)
    out = check_output_dir(out, "--out")  # a file, a link, a FIFO at OUT, or OUT under a file: one line, before any work
    t_suite = time.perf_counter()
    ckpt, export_dir, ckpt_meta, frozen = _pretrained_start(scenario, out, echo, progress)
    runnable, skipped = _runnable(names, str(ckpt), scenario, echo)
    # Shared, cached artefacts a method needs (lightcl-sparse: its pruned export) are built here, once,
    # before any worker starts: a worker must not meter their build (pruning + recovery fine-tune) as
    # its own memory. A worker on a cache miss (another machine of a Ray cluster) still builds them.
    for m in runnable:
        method_class(m).prepare(str(ckpt), scenario.split, load_config(m, suite, config_dir)["hyperparameters"],
                                echo=echo, progress=progress)
    steps = _planned_steps(scenario, data_path)
    results = _results_head(suite, scenario, command, names, seeds, buffer, threads, backend, device, ckpt, ckpt_meta,
                            export_dir, steps, skipped)
    runs = [(seed, m) for seed in range(seeds) for m in runnable]
    common = {"scenario": scenario.to_dict(), "ckpt": str(ckpt), "export_dir": str(export_dir), "threads": threads,
              "frozen": frozen, "backend": backend, "device": device, "data_path": data_path}
    jobs, finished = _plan_jobs(runs, suite, config_dir, buffer, common, out, resume, echo)
    tracker = _SuiteProgress(results, runs, finished, steps, out, sum(steps * j.weight for j in jobs), progress, echo,
                             t_suite)
    echo(f"suite {suite}: {len(runnable)} method(s) x {seeds} seed(s), {scenario.epochs} epoch(s)/task, "
         f"{steps} steps per run; each run in its own process ({executor} executor); log files in {out / 'logs'}")
    if finished:
        echo(f"suite {suite}: resuming: {len(finished)} of {len(runs)} run(s) already finished in {out / RECORDS_DIR} "
             f"({', '.join(f'{m} seed {s}' for s, m in finished)}); running the other {len(jobs)}")
    results["executor"] = {"name": executor, "address": address, "resumed": len(finished)}
    results["records"] = tracker.records()
    if executor == "ray":
        from lightcl.bench.executors import run_ray

        if jobs:
            run_ray(jobs, tracker.on_done, address=address, echo=tracker.bar.write if progress else echo)
    else:
        from lightcl.bench.executors import run_local

        run_local(jobs, tracker.on_done, tracker.on_tick)
    tracker.bar.close()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["wall_s"] = time.perf_counter() - t_suite
    write_all(results, out, plots=plots)
    return results


def _check_request(suite: str, methods, seeds: int | None, epochs: int | None, buffer: int | None, executor: str,
                   address: str | None, config_dir, method_config) -> tuple:
    """Every argument checked, one :class:`InputError` line each, before any work: returns (scenario, seeds,
    method names, config directory)."""
    from lightcl.bench.executors import EXECUTORS
    from lightcl.bench.methods import parse_methods
    from lightcl.bench.scenarios import get_scenario
    from lightcl.engine.errors import InputError

    if executor not in EXECUTORS:
        raise InputError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if address and executor != "ray":
        raise InputError("--address needs --executor ray")
    if address:
        from .ray_address import check_address

        check_address(address)  # form, ray[client] for ray://, reachable within 10 s: one line before any work
    defaults = SUITE_DEFAULTS.get(suite, {})
    seeds = int(seeds if seeds is not None else defaults.get("seeds", 1))
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    if buffer is not None and buffer < 0:
        raise InputError(f"--buffer must be >= 0, got {buffer}")
    scenario = get_scenario(suite, epochs=epochs if epochs is not None else defaults.get("epochs"))
    if scenario.epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {scenario.epochs}")
    names = parse_methods(methods)
    if method_config is not None:
        check_method_config(method_config)  # one line before any work: a typo'd key never runs a suite
        config_dir = method_config
    for m in names:  # every config's keys checked against the typed configs before any work
        load_config(m, suite, config_dir)
    return scenario, seeds, names, config_dir


def _pretrained_start(scenario, out: Path, echo, progress: bool) -> tuple:
    """The same start for every method: the dataset, the scenario's cached backbone and its split export (built
    once), the frozen part's figures; then OUT's folders. Returns (checkpoint, export, checkpoint meta, figures)."""
    from lightcl.bench.pipeline import ensure_backbone, ensure_dataset, ensure_export
    from lightcl.engine.export_dir import load_export_meta
    from lightcl.engine.outpath import ensure_dir
    from lightcl.export.checkpoint import checkpoint_paths

    # data first: a missing dataset is one helpful line (DatasetNotFoundError, exit 2), nothing else
    ensure_dataset(scenario.cl_dataset, echo)
    ckpt = ensure_backbone(scenario, echo=echo, progress=progress)
    export_dir = ensure_export(ckpt, scenario.split, echo=echo, progress=progress)
    ckpt_meta = json.loads(checkpoint_paths(ckpt)[1].read_text())
    frozen = _frozen_figures(str(ckpt), scenario.split,
                             tuple(int(v) for v in load_export_meta(export_dir, verify=False)["input_shape"][-3:]))
    ensure_dir(out, "--out")
    for sub in (RECORDS_DIR, "logs"):  # a link planted at OUT/logs or OUT/records is refused, never followed
        ensure_dir(out / sub, "--out", root=out)
    return ckpt, export_dir, ckpt_meta, frozen


def _runnable(names: list[str], ckpt: str, scenario, echo) -> tuple[list[str], list[dict]]:
    """(methods that run, skipped ones with their reason): not built yet, not applicable to the backbone
    (``Method.not_applicable``: e.g. no block they can sparsify), or needing task boundaries on a blurry stream.
    Nothing left to run is one line (:class:`MethodNotApplicable` or :class:`MethodNotBuilt`)."""
    from lightcl.bench.methods import is_built, method_class

    skipped = []
    runnable = []
    for m in names:
        if not is_built(m):
            skipped.append({"method": m, "reason": "not built yet"})
            echo(f"suite: {m}: not built yet (skipped)")
        else:
            runnable.append(m)
    # methods that cannot run on this backbone (Method.not_applicable: e.g. no block they can sparsify) are
    # recorded with their reason, like unbuilt ones, and the others run
    runnable = _applicable(runnable, ckpt, skipped, echo)
    if scenario.blurry:  # no task boundaries: only the task-free methods can take such a stream
        for m in [m for m in runnable if not method_class(m).task_free]:
            runnable.remove(m)
            skipped.append({"method": m, "status": "not applicable",
                            "reason": "a blurry (task-free) stream: the method needs task boundaries"})
            echo(f"suite: {m}: needs task boundaries (skipped on a blurry stream)")
    if not runnable:
        from lightcl.bench.methods import MethodNotBuilt
        from lightcl.bench.methods.base import MethodNotApplicable

        if any(sk.get("status") == "not applicable" for sk in skipped):
            why = "; ".join(f"{sk['method']}: {sk['reason']}" for sk in skipped)
            raise MethodNotApplicable(f"nothing to run: {why}")
        raise MethodNotBuilt(f"nothing to run: {', '.join(names)} not built yet")
    return runnable, skipped


def _planned_steps(scenario, data_path: str | None) -> int:
    """Update steps of one run (every task's batches x epochs), for the progress bar's ETA."""
    from lightcl.data.datasets import load_dataset
    from lightcl.data.tasks import class_order, split_tasks

    train = load_dataset(scenario.cl_dataset, "train", data_path)
    test_y = load_dataset(scenario.cl_dataset, "test", data_path).y
    order = class_order(len(train.classes), scenario.class_order_seed)
    tasks = split_tasks(train.y, test_y, scenario.n_tasks, scenario.classes_per_task, order)
    steps = _steps_per_run(scenario, [len(t.train_idx) for t in tasks])
    del train
    return steps


def _results_head(suite: str, scenario, command, names, seeds, buffer, threads, backend, device, ckpt, ckpt_meta,
                  export_dir, steps: int, skipped: list[dict]) -> dict[str, Any]:
    """``results.json`` before any run: the setting, the pretrained start, the machine."""
    from lightcl.engine.runtime_info import collect

    return {
        "suite": suite, "scenario": scenario.to_dict(), "command": command,
        "methods": names, "seeds": seeds, "epochs": scenario.epochs, "buffer": buffer, "threads": threads,
        "backend": backend, "device": device,
        "backbone": {"path": str(ckpt), "dataset": ckpt_meta.get("dataset"), "width": ckpt_meta.get("width"),
                     "test_accuracy": ckpt_meta.get("test_accuracy"), "epochs": ckpt_meta.get("epochs"),
                     "sha256": ckpt_meta.get("sha256")},
        "export": str(export_dir), "steps_per_run": steps,
        "records": [], "skipped": skipped, "env": collect(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "paper_suite": suite in PAPER_SUITES,
    }


def _plan_jobs(runs: list[tuple[int, str]], suite: str, config_dir, buffer: int | None, common: dict, out: Path,
               resume: bool, echo) -> tuple[list, dict]:
    """A job per (seed, method) not already finished (``resume``: its record in OUT, same spec); each job's log
    and record path checked under the one output rule before any run starts. Returns (jobs, finished records)."""
    from lightcl.bench.executors import Job
    from lightcl.bench.methods import method_class
    from lightcl.engine.outpath import check_output_file

    weights = {m: method_class(m).cost for _, m in runs}
    jobs: list = []
    finished: dict[tuple[int, str], dict] = {}
    for seed, m in runs:
        cfg = load_config(m, suite, config_dir)
        hp = dict(cfg["hyperparameters"])
        if buffer is not None and "buffer_size" in hp:
            hp["buffer_size"] = int(buffer)
        spec = {"method": m, "seed": seed, "scenario": common["scenario"], "ckpt": common["ckpt"],
                "export_dir": common["export_dir"], "hyperparameters": hp, "threads": common["threads"],
                "frozen": common["frozen"], "backend": common["backend"], "device": common["device"],
                "data_path": common["data_path"], "config": {k: cfg[k] for k in ("file", "version", "sha256", "source")}}
        old = load_finished(out, spec, echo) if resume else None
        if old is not None:
            finished[(seed, m)] = old
        else:
            jobs.append(Job(m, seed, spec, out / "logs" / f"{m}-seed{seed}.log", weights[m], target=RUN_ONE,
                            root=out))
    for j in jobs:  # what each run will write, under the one output rule, before any run starts
        check_output_file(j.log_path, "suite log", root=out)
        check_output_file(record_path(out, j.method, j.seed), "suite record", root=out)
    return jobs, finished


class _SuiteProgress:
    """The suite's progress bar (steps weighted by each method's cost) and what a finished run does: its record
    on disk first (a kill after it never repeats the run), one line, and the partial results written."""

    def __init__(self, results: dict, runs: list, finished: dict, steps: int, out: Path, total: float,
                 progress: bool, echo, t_suite: float) -> None:
        from tqdm import tqdm

        self.results, self.runs, self.finished, self.steps, self.out = results, runs, finished, steps, out
        self.progress, self.echo, self.t_suite = progress, echo, t_suite
        self.done_steps: dict[tuple[int, str], int] = {}
        self.bar = tqdm(total=total, disable=not progress, unit="u", dynamic_ncols=True,
                        mininterval=0.5 if sys.stderr.isatty() else 10.0,
                        bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}] {desc}")

    def records(self) -> list[dict]:
        return [self.finished[r] for r in self.runs if r in self.finished]

    def on_tick(self, job, n: int) -> None:
        bar, steps, done_steps = self.bar, self.steps, self.done_steps
        if (job.seed, job.method) not in done_steps:
            bar.set_description_str(f"{job.method} seed {job.seed}")
        before = done_steps.get((job.seed, job.method), 0)
        done_steps[(job.seed, job.method)] = before + n
        # a run's ticks count up to its planned steps only, and the sum never passes the bar's total (fractional
        # weights such as lightcl-sparse's 0.15 accumulate float error: tqdm warned "clamping frac")
        counted = min(before + n, steps) - min(before, steps)
        bar.update(min(job.weight * counted, max(0.0, bar.total - bar.n)))

    def on_done(self, job, rec: dict) -> None:
        from lightcl.bench.report import write_all
        from lightcl.engine.fileio import write_json_atomic

        bar, out = self.bar, self.out
        rec["run_key"] = run_key(job.spec)
        if rec.get("status") == "ok":
            cil = "n/a" if rec["final_cil"] is None else f"{100 * rec['final_cil']:.1f}%"
            msg = (f"{job.method} seed {job.seed}: CIL {cil}  TIL {100 * rec['final_til']:.1f}%  "
                   f"peak {rec['peak_rss_delta_mib']:.0f} MiB  theory {rec['theoretical_mib']:.1f} MiB  "
                   f"step {rec['step_ms']:.1f} ms  {rec['wall_s']:.0f} s")
        else:
            msg = f"{job.method} seed {job.seed}: FAILED (rc {rec.get('returncode')}), see {rec.get('log')}"
        # the record on disk first: a kill after this line never repeats the run
        write_json_atomic(record_path(out, job.method, job.seed), rec, root=out)
        self.finished[(job.seed, job.method)] = rec
        left = job.weight * max(0, self.steps - self.done_steps.get((job.seed, job.method), 0))
        bar.update(min(left, max(0.0, bar.total - bar.n)))
        bar.set_description_str(f"{job.method} seed {job.seed} done")
        if self.progress:
            bar.write(msg)
        else:
            self.echo(msg)
        self.results["records"] = self.records()
        self.results["wall_s"] = time.perf_counter() - self.t_suite
        write_all(self.results, out, plots=False)  # partial results survive an interruption


def _applicable(names: list[str], ckpt: str, skipped: list[dict], echo) -> list[str]:
    """``names`` less the methods whose ``not_applicable(model)`` gives a reason on the pretrained backbone;
    those go to ``skipped`` as ``{"method", "reason", "status": "not applicable"}`` (the report lists them)."""
    from lightcl.bench.methods import method_class
    from lightcl.export.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    keep = []
    for m in names:
        reason = method_class(m).not_applicable(model)
        if reason:
            skipped.append({"method": m, "status": "not applicable",
                            "reason": f"not applicable to {model.arch}: {reason}"})
            echo(f"suite: {m}: not applicable to {model.arch} (skipped): {reason}")
        else:
            keep.append(m)
    return keep

