"""The worker of ``lightcl bench update``, run in a fresh subprocess per mode (:func:`lightcl.bench.worker.run_worker`
on :func:`run_mode`): build the mode, take its update steps on the one stream loop
(:func:`lightcl.data.stream.run_stream`, the loop ``lightcl learn`` and the suite's worker run), then one more
step with the ledger's meters on (:mod:`.ledger`) and a few for the phases (:mod:`.phases`), so the timed steps
run without either.

The stream here is two lessons over two real batches (task A: classes 0, 1; task B: 2, 3; :func:`prepare_data`):
task A is one untimed step, closed, so task B has a buffer and targets; task B is the timed lesson (the same
batch ``warmup + steps`` times) and is left open for the metered step. Fine-tuning has task B only.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lightcl.bench.meters import peak_mib
from lightcl.data.stream import StreamAgent, run_stream
from lightcl.data.tasks import Task

from .ledger import IdleProcess, MeteredStep, frozen_params, inuse, nbytes, onnx_initializer_bytes, take_apart
from .modes import ENGINE_MODES, OVERLAP_MODES, mode_context, overlap_threads
from .phases import engine_phases, module_phases

MiB = float(1 << 20)


def minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ---------------------------------------------------------------------------------------------- the timed loop
class TimedStep:
    """The step a mode times: ``fn()``; ``open`` runs as the timed lesson begins (after ``begin_task``), ``close``
    as it ends."""

    def __init__(self, fn: Callable[[], Any], open: Callable[[], None] | None = None) -> None:
        self.fn, self._open = fn, open

    def open(self) -> None:
        if self._open is not None:
            self._open()

    def __call__(self) -> None:
        self.fn()

    def close(self) -> None:
        pass


class PrefetchStep(TimedStep):
    """Overlapped modes: the next batch's features come from the prefetch thread (``LightCL.prefetch``); the
    step's time runs from asking for them to the end of the head's step (the extraction it waited for included)."""

    def __init__(self, learner, x, y, n: int) -> None:
        super().__init__(self._step)
        self.learner, self.x, self.y, self.n = learner, x, y, n
        self.feed = None

    def open(self) -> None:
        self.feed = iter(self.learner.prefetch((self.x, self.y) for _ in range(self.n)))

    def _step(self) -> None:
        x_, y_, f_ = next(self.feed)
        self.learner.observe(x_, y_, features=f_)

    def close(self) -> None:
        self.feed.close()  # the prefetch thread ends


class UpdateAgent(StreamAgent):
    """``bench update`` on the stream loop. A lesson with a batch in ``setup`` sets the mode up: one untimed step
    through the method, then the task is closed. The other (last) lesson is the timed one: ``warmup + steps``
    calls of ``step``, each timed (wall, process CPU of all threads, minor page faults; the warm-up steps' not
    kept) with the process's peak read after it (``hwm``: which step raised the peak); it is left open, so the
    metered step and the phases that follow run inside the same task."""

    def __init__(self, method, setup: dict[int, tuple], step: TimedStep, warmup: int, steps: int) -> None:
        self.method, self.setup, self.step = method, setup, step
        self.warmup, self.n = warmup, warmup + steps
        self.timed = False
        # CPU and faults depend on the machine's load much less than wall time; faults are what a fixed mmap
        # threshold costs (fresh pages every step)
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.faults: list[int] = []
        self.hwm: list[float] = []

    def begin(self, lesson: Task) -> None:
        self.method.begin_task(lesson.task_id, lesson.classes)
        self.timed = lesson.task_id not in self.setup
        if self.timed:
            self.step.open()

    def batches(self, lesson: Task):
        return range(self.n) if self.timed else [self.setup[lesson.task_id]]

    def observe(self, batch) -> None:
        if not self.timed:
            self.method.observe(*batch)
            return
        t, c, f = time.perf_counter(), time.process_time(), minor_faults()
        self.step()
        if batch >= self.warmup:
            self.times.append((time.perf_counter() - t) * 1000)
            self.cpu_times.append((time.process_time() - c) * 1000)
            self.faults.append(minor_faults() - f)
        self.hwm.append(peak_mib())  # after the step's figures: which step raised the process's peak

    def end(self, lesson: Task) -> None:
        if self.timed:
            self.step.close()
        else:
            self.method.end_task()


def lesson(task_id: int, classes: list) -> Task:
    """A lesson of the update stream: its batch is given, not drawn from indices."""
    return Task(task_id, classes, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))


def run_steps(method, lessons: list[Task], setup: dict[int, tuple], step: TimedStep, warmup: int,
              steps: int) -> UpdateAgent:
    agent = UpdateAgent(method, setup, step, warmup, steps)
    run_stream(lessons, agent, epochs=1)
    return agent


# ---------------------------------------------------------------------------------------------- one mode
@dataclass
class Measured:
    """What a mode's run leaves for its record."""

    agent: UpdateAgent
    peak_timed: float  # the process's peak after the timed steps, before the metered one
    metered: MeteredStep
    phases: dict
    constant: dict  # the ledger's rows alive through the whole step, MiB
    weights: int
    trainable: int
    activations: int
    info: dict


@dataclass
class OpenedExtractor:
    """An engine mode's extractor, opened on its own so its load and first run are metered (malloc in use before
    the load, after it, after the first run)."""

    ext: Any
    export_dir: str
    backend: str
    malloc: Any
    m_pre_load: dict | None
    m_load: dict | None
    m_run: dict | None


def open_engine_extractor(mode: str, export_dir: str, sparse_export: str | None, threads: int | None, xb,
                          idle: IdleProcess) -> OpenedExtractor:
    import torch

    from lightcl.bench.meters import mallinfo
    from lightcl.engine.allocator import apply_lean_malloc, release_free_heap
    from lightcl.engine.export_dir import load_export_meta
    from lightcl.engine.extractors import load_extractor, options_for

    backend, which, _lopts, xopts = ENGINE_MODES[mode]
    edir = export_dir if which == "dense" else sparse_export
    if not edir:
        from lightcl.engine.errors import InputError

        raise InputError(f"mode {mode} needs a pruned export (--sparse-export DIR)")
    opts = {**options_for(backend, threads=threads or None, spin=False), **xopts}
    if mode in OVERLAP_MODES:
        torch.set_num_threads(overlap_threads()[1])
    # the engine's default as a learner/extractor is created (LIGHTCL_MALLOC=system in *-system modes)
    malloc = apply_lean_malloc(profile=load_export_meta(edir, verify=False).get("profile"))
    m_pre_load = mallinfo()
    ext = load_extractor(edir, backend=backend, **opts)
    trimmed = release_free_heap()  # the session's one-time temporaries (a no-op unless the lean allocator is on)
    idle.stage("extractor")
    m_load = mallinfo()
    if trimmed and m_load:
        idle.free_base = m_load["fordblks"]
    with torch.no_grad():
        f0 = ext(torch.cat([xb, xb[:15]]))
    del f0
    idle.stage("extractor_run")
    return OpenedExtractor(ext, edir, backend, malloc, m_pre_load, m_load, mallinfo())


def engine_figures(opened: OpenedExtractor, learner, xb, const_bytes: int, idle: IdleProcess) -> tuple:
    """(constant rows, weights, trainable, activations, extractor info) of an engine mode, after its steps."""
    import torch

    from lightcl.bench.accounting import count_activations
    from lightcl.engine.export_dir import load_export_meta

    edir, ext, stages = opened.export_dir, opened.ext, idle.stages
    meta = load_export_meta(edir, verify=False)
    frozen = frozen_params(edir)
    # the weights the extractor really holds: its own file's (ONNX initializers, int8 included) or torch's tensors
    fw = onnx_initializer_bytes(Path(edir) / ext.file) if str(ext.file).endswith(".onnx") else nbytes(frozen)
    if opened.m_pre_load:  # malloc's in-use bytes across the load and the first run: what the session keeps
        session = (inuse(opened.m_load) - inuse(opened.m_pre_load)) / MiB - fw / MiB
        run_kept = (inuse(opened.m_run) - inuse(opened.m_load)) / MiB
    else:  # RSS deltas (they also hold freed heap and pages of onnxruntime's library)
        session, run_kept = stages["extractor"] - fw / MiB, stages["extractor_run"] - stages["extractor"]
    head = learner.head
    constant = {"frozen_weights": fw / MiB, "frozen_session": session, "run_buffers": run_kept,
                "head_weights": nbytes(head.parameters()) / MiB,
                "optimizer_state": sum(v.numel() * v.element_size() for st in learner.optimizer.state.values()
                                       for v in st.values() if isinstance(v, torch.Tensor)) / MiB,
                "buffer_masks": learner.memory.nbytes() / MiB, "step_inputs": const_bytes / MiB}
    feats = learner.extract(torch.cat([xb, xb[:learner.config.buffer_size]]))
    weights = sum(p.numel() for p in head.parameters()) + sum(p.numel() for p in frozen)
    trainable = sum(p.numel() for p in head.parameters())
    acts = count_activations(head, feats)
    info = {**ext.info(), "optimizer_step": learner.config.optimizer_step, "export": str(edir),
            "sparsity": (meta.get("sparsity") or {}).get("weight_sparsity"), "malloc": opened.malloc}
    if opened.backend == "ort-int8":  # first-class only where the export's agreement check passed
        i8 = meta.get("int8") or {}
        info["int8"] = {"top1_agreement": i8.get("top1_agreement"), "min_agreement": i8.get("min_agreement"),
                        "forced": bool(i8.get("forced"))}
    return constant, weights, trainable, acts, info


def run_engine_mode(mode: str, export_dir: str, sparse_export: str | None, threads: int | None, data: dict,
                    n_classes: int, idle: IdleProcess, warmup: int, steps: int, keep: bool) -> Measured:
    """The engine (the ``lightcl`` method, its learner options from ``ENGINE_MODES``) on an extractor opened here;
    the timed step is the learner's own ``observe``."""
    from lightcl.bench.methods import create_method

    xa, ya, xb, yb = data["xa"], data["ya"], data["xb"], data["yb"]
    opened = open_engine_extractor(mode, export_dir, sparse_export, threads, xb, idle)
    ctx = mode_context(opened.export_dir, n_classes, len(xb), threads, extractor=opened.ext)
    method = create_method("lightcl", ctx, **ENGINE_MODES[mode][2])
    learner = method.learner
    idle.stage("head")
    step = (PrefetchStep(learner, xb, yb, warmup + steps) if mode in OVERLAP_MODES
            else TimedStep(lambda: learner.observe(xb, yb)))
    ca, cb = sorted(set(ya.tolist())), sorted(set(yb.tolist()))
    agent = run_steps(method, [lesson(0, ca), lesson(1, cb)], {0: (xa, ya)}, step, warmup, steps)
    peak_timed = peak_mib()
    head = learner.head
    const_bytes = nbytes(t for t in (xb, yb, learner.last_features) if t is not None)
    metered = MeteredStep(head, list(head.parameters()), lambda: learner.observe(xb, yb),
                          [(learner, ("extract",)), (learner.optimizer, ("step",))], keep)
    idle.stage("after_steps")
    phases = engine_phases(learner, xb, yb, min(steps, 5))
    constant, weights, trainable, acts, info = engine_figures(opened, learner, xb, const_bytes, idle)
    return Measured(agent, peak_timed, metered, phases, constant, weights, trainable, acts, info)


def reference_figures(method, xb, n_classes: int) -> dict:
    """The authors' procedure's trainable weights, optimizer, buffer and one step's activations (the head's
    modules on the frozen blocks' output, + the logits)."""
    import torch

    from lightcl.bench.accounting import count_activations

    ref, model, k = method.ref, method.model, method.k
    head_mods = torch.nn.Sequential(*model.blocks[k + 1:])
    fig = {"model": model, "k": k, "trainable": list(ref.trainable), "opt": ref.optimizer,
           "buffer_bytes": ref.memory.nbytes()}
    with torch.no_grad():
        f = torch.cat([xb, xb[:15]])
        for b in model.blocks[:k + 1]:
            f = b(f)
    fig["acts"] = count_activations(head_mods, f) + (len(xb) + 15) * n_classes
    del f
    return fig


def finetune_figures(method, split: str, xb) -> dict:
    """Fine-tuning's (the ``sgd`` method: every weight trained): the split only says which blocks an extractor
    would run, for the phases."""
    from lightcl.bench.accounting import count_activations
    from lightcl.export.zoo import split_index

    model = method.net
    return {"model": model, "k": split_index(model, split), "trainable": list(model.parameters()),
            "opt": method.optimizer, "buffer_bytes": 0, "acts": count_activations(model, xb)}


def run_model_mode(mode: str, export_dir: str, threads: int | None, data: dict, n_classes: int,
                   idle: IdleProcess, warmup: int, steps: int, keep: bool) -> Measured:
    """A whole model composed from the export, built by the method registry: ``lightcl-reference`` (the authors'
    procedure, after a first task so the second has a buffer and targets) or ``finetune`` / ``finetune-lean``
    (the ``sgd`` method, one task, its steps only; ``-lean``: the same in a process with ``LEAN_ENV``)."""
    import torch

    from lightcl.bench.methods import create_method

    xa, ya, xb, yb = data["xa"], data["ya"], data["xb"], data["yb"]
    ctx = mode_context(export_dir, n_classes, len(xb), threads)
    reference = mode == "lightcl-reference"
    # the registry's methods: the whole model composed from the export (no checkpoint in ctx)
    method = create_method("lightcl-reference" if reference else "sgd", ctx)
    idle.stage("head")
    fig: dict = {}

    def step() -> None:
        method.observe(xb, yb)

    def open_reference() -> None:
        step()  # the first step of the task takes the buffer from its batch (the authors' first batch)
        fig.update(reference_figures(method, xb, n_classes))

    ca, cb = sorted(set(ya.tolist())), sorted(set(yb.tolist()))
    if reference:
        agent = run_steps(method, [lesson(0, ca), lesson(1, cb)], {0: (xa, ya)}, TimedStep(step, open_reference),
                          warmup, steps)
    else:
        agent = run_steps(method, [lesson(0, cb)], {}, TimedStep(
            step, lambda: fig.update(finetune_figures(method, ctx.scenario.split, xb))), warmup, steps)
    peak_timed = peak_mib()
    model, opt, trainable_params = fig["model"], fig["opt"], fig["trainable"]
    metered = MeteredStep(model, trainable_params, step, [(opt, ("step", "zero_grad"))], keep)
    idle.stage("after_steps")
    phases = module_phases(step, model, fig["k"], min(steps, 5))
    tb = nbytes(trainable_params)
    constant = {"frozen_weights": (nbytes(model.parameters()) - tb) / MiB, "frozen_session": 0.0,
                "run_buffers": 0.0, "head_weights": tb / MiB,
                "optimizer_state": sum(v.numel() * v.element_size() for st in opt.state.values()
                                       for v in st.values() if isinstance(v, torch.Tensor)) / MiB,
                "buffer_masks": fig["buffer_bytes"] / MiB, "step_inputs": nbytes((xb, yb)) / MiB}
    return Measured(agent, peak_timed, metered, phases, constant, sum(p.numel() for p in model.parameters()),
                    sum(p.numel() for p in trainable_params), fig["acts"],
                    {"backend": "torch", "threads": torch.get_num_threads()})


# ---------------------------------------------------------------------------------------------- the worker
def run_mode(spec: dict) -> dict:
    """The worker's entry (:func:`lightcl.bench.worker.run_worker`): ``spec`` holds :func:`worker`'s arguments."""
    return worker(**spec)


def worker(mode: str, export_dir: str, data_file: str, steps: int, warmup: int, threads: int | None,
           sparse_export: str | None = None) -> dict:
    """Runs inside the subprocess: build ``mode``, take ``warmup + steps`` update steps, measure; then one
    more step with the ledger's meters on (so the timed steps run without them)."""
    import torch
    from safetensors.torch import load_file

    # what a mode builds with, imported before the idle baseline (so no mode counts a library as its memory)
    import lightcl.bench.accounting  # noqa: F401
    import lightcl.bench.methods  # noqa: F401
    import lightcl.engine.extractors  # noqa: F401
    from lightcl.engine.export_dir import load_export_meta

    if threads:
        torch.set_num_threads(threads)
    idle = IdleProcess(int(v) for v in load_export_meta(export_dir, verify=False)["input_shape"][-3:])
    data = load_file(data_file)
    idle.stage("data")
    n_classes = max(sorted(set(data["ya"].tolist())) + sorted(set(data["yb"].tolist()))) + 1
    keep = bool(os.environ.get("LIGHTCL_LEDGER_SAMPLES"))  # keep every ledger sample in the result (debugging)
    if mode in ENGINE_MODES:
        run = run_engine_mode(mode, export_dir, sparse_export, threads, data, n_classes, idle, warmup, steps, keep)
    else:
        run = run_model_mode(mode, export_dir, threads, data, n_classes, idle, warmup, steps, keep)
    return mode_record(mode, steps, len(data["xb"]), idle, run, keep)


def mode_record(mode: str, steps: int, batch: int, idle: IdleProcess, run: Measured, keep: bool) -> dict:
    """The worker's result: the timed steps' figures, the peak and its ledger, the theoretical memory."""
    from lightcl.bench.accounting import theoretical_mib

    times = sorted(run.agent.times)
    peak = run.metered.peak
    ledger, at_peak = take_apart(run.metered, run.constant, idle, run.agent.hwm, keep)
    return {
        "mode": mode, "steps": steps, "batch": int(batch),
        "step_ms": statistics.median(times), "step_ms_p90": times[int(0.9 * (len(times) - 1))],
        "step_ms_mean": statistics.fmean(times), "step_cpu_ms": statistics.median(run.agent.cpu_times),
        "step_minor_faults": int(statistics.median(run.agent.faults)),
        "idle_rss_mib": idle.rss, "peak_rss_mib": peak, "peak_rss_delta_mib": peak - idle.rss,
        # the same without the metered step (what earlier passes reported): the two differ by run-to-run noise
        "peak_rss_delta_timed_mib": run.peak_timed - idle.rss,
        "theoretical_mib": theoretical_mib(run.weights, run.trainable, run.activations),
        "weights": run.weights, "trainable_params": run.trainable, "activations": run.activations,
        "extractor": run.info, "ledger_mib": ledger, "ledger_at": at_peak, "stages_mib": idle.stages,
        "phases_ms": run.phases,
        # gradients kept from the previous step into the metered step's forward (0 for a loop that zeroes
        # them before the forward, as every mode here should): a hidden extra at the peak if not 0
        "gradients_carried_mib": run.metered.gradients.carried / MiB,
    }
