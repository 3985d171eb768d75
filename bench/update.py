"""``lightcl bench update``: one update step, measured per mode, each mode in a fresh subprocess.

Modes (same data, same head):
- ``lightcl``            the engine, onnxruntime extractor, buffer kept as frozen features
- ``lightcl-torch``      the engine, torch extractor
- ``lightcl-reference``  the authors' procedure: whole model in torch, train mode, buffer images pushed
                         through the whole model every step
- ``finetune``           the whole model trained with cross-entropy
- ``lightcl-int8``       (opt-in) the engine with the int8 extractor (an export made with ``--int8``)
- ``lightcl-sparse``     (opt-in, ``sparse_export``) the engine on a physically pruned export
- ``lightcl-sparse-int8`` (opt-in) the same with the pruned export's int8 extractor
- ``lightcl-plain``      (opt-in) the engine with the plain ``torch.optim.SGD`` step (what the
                         per-parameter step saves), ``lightcl-noarena`` onnxruntime without its CPU arena
- ``lightcl-lean``, ``lightcl-sparse-lean``, ``finetune-lean`` (opt-in) no onnxruntime arena, and the
                         process's glibc malloc with a fixed mmap threshold and two arenas (``LEAN_ENV``)
- ``lightcl-system``, ``lightcl-sparse-system``, ``lightcl-int8-system`` (opt-in) the engine with glibc's
                         malloc forced (``LIGHTCL_MALLOC=system``) and onnxruntime's arena on
- ``lightcl-whole``, ``lightcl-int8-whole`` (opt-in) the engine without micro-batched extraction
                         (``extract_budget=None``: whole batches through the frozen part, as before it);
                         ``lightcl-int8-lean`` the int8 engine with ``LEAN_ENV``
- ``lightcl-overlap``, ``lightcl-int8-overlap`` (opt-in) the next batch extracted while the head trains
                         (``LightCL.prefetch``): onnxruntime 1 thread, torch the other cores; the ledger's and the
                         phases' extra steps run sequentially

Engine modes apply the engine's allocator policy (engine/allocator.py: glibc's defaults unless
``LIGHTCL_MALLOC=lean`` is set, e.g. ``LIGHTCL_MALLOC=lean lightcl bench update ...``) where ``load_extractor``
does (before the session is created) and run a learning extractor without onnxruntime's arena.
Each mode also reports process CPU ms and minor page faults per step, and the step's phases.

Every mode also measures a *ledger* of its peak (``ledger_mib``): a partition of the peak RSS delta taken at one
moment of one extra, metered step after the timed ones (so the timing pays nothing): the sample where glibc
malloc's footprint is largest, among samples taken at every module's forward, every autograd node of the head
in backward, every gradient accumulation, around the extractor and the optimizer, and every millisecond from a
thread (inside onnxruntime's run and torch's kernels). Rows: frozen weights (ONNX initializers or torch
tensors), the runtime session and what its runs keep (malloc's in-use growth across its load and first run),
head weights, gradients and saved activations alive at that moment (gradient hooks, saved-tensor holders),
optimizer state, buffer + masks, the step's inputs, other malloc memory in use before the step, the step's
temporaries (malloc's in-use growth no tensor row explains: oneDNN scratch, autograd's intermediate
gradients), the freed heap malloc keeps (``mallinfo2`` ``fordblks``), library pages (file-backed RSS), and what
remains unexplained (non-malloc memory: Python's arenas, thread stacks; the part of the peak reached outside the
sampled moment). :func:`partition_peak` says how each is measured and why none is counted twice. Without glibc the
malloc rows are "not available" (``None``).

Peak RSS is measured above the worker's RSS right after its imports (the idle process), so the
interpreter and libraries do not count; theoretical memory follows the paper's accounting.

Each mode is built from the benchmark's method registry (``bench/methods``), as the suite builds it:
the engine modes are the ``lightcl`` method (its learner options from ``ENGINE_MODES``, on an extractor
opened here so its load is metered on its own), ``lightcl-reference`` is the ``lightcl-reference``
method and ``finetune`` the ``sgd`` method (the whole model, a fresh classifier, CE over its outputs),
both on the whole model composed from the export. Each runs through the one worker harness
(:func:`lightcl.bench.worker.run_worker`).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from lightcl.bench.methods.base import compose_backbone  # noqa: F401  (moved there; kept importable here)

MODES = ("lightcl", "lightcl-torch", "lightcl-reference", "finetune", "lightcl-int8", "lightcl-sparse",
         "lightcl-sparse-int8", "lightcl-plain", "lightcl-noarena", "lightcl-lean", "lightcl-lean-plain",
         "lightcl-sparse-lean", "finetune-lean", "lightcl-system", "lightcl-sparse-system", "lightcl-int8-system",
         "lightcl-whole", "lightcl-int8-whole", "lightcl-int8-lean", "lightcl-overlap", "lightcl-int8-overlap")
DEFAULT_MODES = MODES[:4]


# The onnxruntime options of a *learning* extractor: no CPU memory arena (the arena keeps the largest run's
# buffers for the life of the session; measured in docs/results/ledger.md). Passed explicitly here until the
# ort backend takes it as its learning default.
LEARNING_ORT = {"arena": False}
# the engine before its lean defaults: onnxruntime's arena on, glibc's own malloc behaviour (LIGHTCL_MALLOC=system)
SYSTEM_ORT = {"arena": True}

# mode -> (extractor backend, which export, learner options, extractor options)
ENGINE_MODES: dict[str, tuple[str, str, dict, dict]] = {
    "lightcl": ("ort", "dense", {}, LEARNING_ORT),
    "lightcl-system": ("ort", "dense", {}, SYSTEM_ORT),
    "lightcl-plain": ("ort", "dense", {"optimizer_step": "plain"}, LEARNING_ORT),
    "lightcl-noarena": ("ort", "dense", {}, {"arena": False}),
    "lightcl-lean": ("ort", "dense", {}, {"arena": False}),
    "lightcl-lean-plain": ("ort", "dense", {"optimizer_step": "plain"}, {"arena": False}),
    "lightcl-torch": ("torch", "dense", {}, {}),
    "lightcl-int8": ("ort-int8", "dense", {}, LEARNING_ORT),
    "lightcl-int8-system": ("ort-int8", "dense", {}, SYSTEM_ORT),
    "lightcl-sparse": ("ort", "sparse", {}, LEARNING_ORT),
    "lightcl-sparse-system": ("ort", "sparse", {}, SYSTEM_ORT),
    "lightcl-sparse-lean": ("ort", "sparse", {}, {"arena": False}),
    "lightcl-sparse-int8": ("ort-int8", "sparse", {}, LEARNING_ORT),
    # the engine before micro-batched extraction (engine/microbatch.py): whole batches through the frozen part
    "lightcl-whole": ("ort", "dense", {"extract_budget": None}, LEARNING_ORT),
    "lightcl-int8-whole": ("ort-int8", "dense", {"extract_budget": None}, LEARNING_ORT),
    "lightcl-int8-lean": ("ort-int8", "dense", {}, {"arena": False}),
    # extraction of the next batch overlapped with the head's step (engine/prefetch.py): onnxruntime 1 thread,
    # torch the other cores (OVERLAP_THREADS)
    "lightcl-overlap": ("ort", "dense", {}, {**LEARNING_ORT, "threads": 1}),
    "lightcl-int8-overlap": ("ort-int8", "dense", {}, {**LEARNING_ORT, "threads": 1}),
}
OVERLAP_MODES = ("lightcl-overlap", "lightcl-int8-overlap")


def overlap_threads() -> "tuple[int, int]":
    """(onnxruntime, torch) threads of an overlapped step: one core extracts, the others train the head."""
    n = os.cpu_count() or 1
    return 1, max(1, n - 1)
# glibc malloc for a lean process set from the environment (what engine/allocator.py now does from inside
# the process): a fixed mmap threshold and two arenas.
LEAN_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}
SYSTEM_ENV = {"LIGHTCL_MALLOC": "system"}
MODE_ENV: dict[str, dict[str, str]] = {"lightcl-lean": LEAN_ENV, "lightcl-lean-plain": LEAN_ENV,
                                       "lightcl-sparse-lean": LEAN_ENV, "finetune-lean": LEAN_ENV,
                                       "lightcl-system": SYSTEM_ENV, "lightcl-sparse-system": SYSTEM_ENV,
                                       "lightcl-int8-system": SYSTEM_ENV, "lightcl-int8-lean": LEAN_ENV}
LEDGER_ROWS = ("frozen_weights", "frozen_session", "run_buffers", "head_weights", "gradients", "optimizer_state",
               "activations", "buffer_masks", "step_inputs", "malloc_other", "torch_temporaries", "malloc_free",
               "library_pages", "peak_elsewhere")


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _onnx_initializer_bytes(path: Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    total = 0
    for t in m.graph.initializer:
        total += len(t.raw_data) if t.raw_data else onnx.numpy_helper.to_array(t).nbytes
    return total


def _context(export_dir: str, n_classes: int, batch: int, threads: int | None, extractor=None):
    """The MethodContext of one mode: a two-task scenario at the export's split, no checkpoint (the whole
    model is composed from the export), flops figures left out (not reported here)."""
    from lightcl.bench.methods.base import MethodContext
    from lightcl.bench.scenarios import Scenario
    from lightcl.engine.export_dir import load_export_meta

    meta = load_export_meta(export_dir, verify=False)
    scenario = Scenario("bench-update", str(meta.get("dataset")), str(meta.get("dataset")), 2, 2,
                        width=int(meta["width"]), pretrain_epochs=0, epochs=1, batch_size=int(batch),
                        split=meta["split"], augment=False, arch=str(meta.get("arch") or "resnet18"))
    return MethodContext(scenario=scenario, ckpt=None, export_dir=str(export_dir), num_classes=n_classes, seed=0,
                         input_shape=tuple(int(v) for v in meta["input_shape"][-3:]), threads=threads,
                         extractor=extractor)


def run_mode(spec: dict) -> dict:
    """The worker's entry (:func:`lightcl.bench.worker.run_worker`): ``spec`` holds :func:`worker`'s arguments."""
    return worker(**spec)


def worker(mode: str, export_dir: str, data_file: str, steps: int, warmup: int, threads: int | None,
           sparse_export: str | None = None) -> dict:
    """Runs inside the subprocess: build ``mode``, take ``warmup + steps`` update steps, measure; then one
    more step with the ledger's meters on (so the timed steps run without them)."""
    import gc

    import torch
    from safetensors.torch import load_file

    from lightcl.bench.accounting import (GradientMeter, SavedTensorMeter, StepSampler, count_activations,
                                          theoretical_mib)
    from lightcl.bench.methods import create_method
    from lightcl.engine.export_dir import load_export_meta
    from lightcl.engine.extractors import load_extractor

    if threads:
        torch.set_num_threads(threads)
    from lightcl.bench.meters import mallinfo, mallinfo_source, malloc_trim, peak_mib, rss_mib, rss_parts, warm_up

    # the same idle baseline as the suite (its warm-up runs at the export's input shape): libraries
    # initialised, freed heap returned
    warm_up(tuple(int(v) for v in load_export_meta(export_dir, verify=False)["input_shape"][-3:]))
    malloc_trim()
    idle = rss_mib()
    idle_parts, m_idle = rss_parts(), mallinfo()
    free_base = m_idle["fordblks"] if m_idle else 0  # free bytes right after the last trim (not resident)
    MiB = float(1 << 20)
    stages: dict[str, float] = {}

    def stage(name: str) -> None:
        gc.collect()
        stages[name] = rss_mib() - idle

    d = load_file(data_file)
    xa, ya, xb, yb = d["xa"], d["ya"], d["xb"], d["yb"]
    stage("data")
    ca, cb = sorted(set(ya.tolist())), sorted(set(yb.tolist()))
    n_classes = max(ca + cb) + 1
    # wall, process CPU (all threads) and minor page faults per step: CPU and faults depend on the machine's
    # load much less than wall time; faults are what a fixed mmap threshold costs (fresh pages every step)
    times, cpu_times, faults = [], [], []
    hwm: list[float] = []
    keep = bool(os.environ.get("LIGHTCL_LEDGER_SAMPLES"))  # keep every ledger sample in the result (debugging)
    if mode in ENGINE_MODES:
        backend, which, lopts, xopts = ENGINE_MODES[mode]
        edir = export_dir if which == "dense" else sparse_export
        if not edir:
            from lightcl.engine.errors import InputError

            raise InputError(f"mode {mode} needs a pruned export (--sparse-export DIR)")
        from lightcl.engine.extractors import options_for

        opts = {**options_for(backend, threads=threads or None, spin=False), **xopts}
        if mode in OVERLAP_MODES:
            torch.set_num_threads(overlap_threads()[1])
        from lightcl.engine.allocator import apply_lean_malloc, release_free_heap

        # the engine's default as a learner/extractor is created (LIGHTCL_MALLOC=system in *-system modes)
        malloc = apply_lean_malloc(profile=load_export_meta(edir, verify=False).get("profile"))
        m_pre_load = mallinfo()
        ext = load_extractor(edir, backend=backend, **opts)
        trimmed = release_free_heap()  # the session's one-time temporaries (a no-op unless the lean allocator is on)
        stage("extractor")
        m_load = mallinfo()
        if trimmed and m_load:
            free_base = m_load["fordblks"]
        with torch.no_grad():
            f0 = ext(torch.cat([xb, xb[:15]]))
        del f0
        stage("extractor_run")
        m_run = mallinfo()
        method = create_method("lightcl", _context(edir, n_classes, len(xb), threads, extractor=ext), **lopts)
        learner = method.learner
        stage("head")
        method.begin_task(0, ca)
        method.observe(xa, ya)
        method.end_task()
        method.begin_task(1, cb)
        # overlapped modes: the next batch's features come from the prefetch thread; the step's time is from
        # asking for them to the end of the head's step (the extraction it waited for included)
        feed = (iter(learner.prefetch((xb, yb) for _ in range(warmup + steps))) if mode in OVERLAP_MODES else None)
        for i in range(warmup + steps):
            t, c, f = time.perf_counter(), time.process_time(), _minor_faults()
            if feed is not None:
                x_, y_, f_ = next(feed)
                learner.observe(x_, y_, features=f_)
            else:
                learner.observe(xb, yb)
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000)
                cpu_times.append((time.process_time() - c) * 1000)
                faults.append(_minor_faults() - f)
            hwm.append(peak_mib())  # after the step's figures: which step raised the process's peak
        if feed is not None:
            feed.close()  # the prefetch thread ends
        peak_timed = peak_mib()
        head = learner.head
        gm = GradientMeter(head.parameters(), forward_of=head)
        sm = SavedTensorMeter(list(head.parameters()))
        sampler = StepSampler([head], head.parameters(), sm, keep_samples=keep)
        const_bytes = _bytes(t for t in (xb, yb, getattr(learner, "_last_features", None)) if t is not None)
        gc.collect()
        s0 = sampler.sample("step start")
        sampler.start_timer()
        with _sampled_calls(sampler, learner, ("extract",)), _sampled_calls(sampler, learner.optimizer, ("step",)), sm:
            learner.observe(xb, yb)
        gm.remove()
        sampler.remove()
        # the peak the ledger splits: the timed steps' and the metered one's (one more of the same step), read
        # before the accounting below allocates anything
        peak = peak_mib()
        stage("after_steps")
        phases = _engine_phases(learner, xb, yb, min(steps, 5))
        meta = load_export_meta(edir, verify=False)
        frozen_params = _frozen_params(edir)
        # the weights the extractor really holds: its own file's (ONNX initializers, int8 included) or torch's tensors
        fw = (_onnx_initializer_bytes(Path(edir) / ext.file) if str(ext.file).endswith(".onnx")
              else _bytes(frozen_params))
        if m_pre_load:  # malloc's in-use bytes across the load and the first run: what the session keeps
            session = (_inuse(m_load) - _inuse(m_pre_load)) / MiB - fw / MiB
            run_kept = (_inuse(m_run) - _inuse(m_load)) / MiB
        else:  # RSS deltas (they also hold freed heap and pages of onnxruntime's library)
            session, run_kept = stages["extractor"] - fw / MiB, stages["extractor_run"] - stages["extractor"]
        constant = {"frozen_weights": fw / MiB, "frozen_session": session, "run_buffers": run_kept,
                    "head_weights": _bytes(head.parameters()) / MiB,
                    "optimizer_state": sum(v.numel() * v.element_size() for st in learner.optimizer.state.values()
                                           for v in st.values() if isinstance(v, torch.Tensor)) / MiB,
                    "buffer_masks": learner.memory.nbytes() / MiB, "step_inputs": const_bytes / MiB}
        feats = learner.extract(torch.cat([xb, xb[:learner.config.buffer_size]]))
        weights = sum(p.numel() for p in head.parameters()) + sum(p.numel() for p in frozen_params)
        trainable = sum(p.numel() for p in head.parameters())
        acts = count_activations(head, feats)
        info = {**ext.info(), "optimizer_step": learner.config.optimizer_step, "export": str(edir),
                "sparsity": (meta.get("sparsity") or {}).get("weight_sparsity"), "malloc": malloc}
        if backend == "ort-int8":  # first-class only where the export's agreement check passed
            i8 = meta.get("int8") or {}
            info["int8"] = {"top1_agreement": i8.get("top1_agreement"), "min_agreement": i8.get("min_agreement"),
                            "forced": bool(i8.get("forced"))}
    else:
        ctx = _context(export_dir, n_classes, len(xb), threads)
        # the registry's methods: the whole model composed from the export (no checkpoint in ctx)
        method = create_method("lightcl-reference" if mode == "lightcl-reference" else "sgd", ctx)
        stage("head")
        if mode == "lightcl-reference":  # a first task, so the second one has a buffer and targets
            method.begin_task(0, ca)
            method.observe(xa, ya)
            method.end_task()
            method.begin_task(1, cb)
        else:  # fine-tuning: one task, its steps only
            method.begin_task(0, cb)
        step = lambda: method.observe(xb, yb)  # noqa: E731
        if mode == "lightcl-reference":
            ref, model, k = method.ref, method.model, method.k
            step()  # the first step of the task takes the buffer from its batch (the authors' first batch)
            trainable_params = list(ref.trainable)
            opt = ref.optimizer
            buffer_bytes = ref.memory.nbytes()
            head_mods = torch.nn.Sequential(*model.blocks[k + 1:])
            with torch.no_grad():
                f = torch.cat([xb, xb[:15]])
                for b in model.blocks[:k + 1]:
                    f = b(f)
            acts = count_activations(head_mods, f) + (len(xb) + 15) * n_classes
            del f
        else:  # finetune, finetune-lean (the same, in a process with LEAN_ENV's allocator): the `sgd` method
            from lightcl.export.zoo import _split_index

            model, opt = method.net, method.optimizer
            k = _split_index(model, ctx.scenario.split)  # for the phases: the blocks an extractor would run
            trainable_params = list(model.parameters())
            buffer_bytes = 0
            acts = count_activations(model, xb)
        trainable = sum(p.numel() for p in trainable_params)
        for i in range(warmup + steps):
            t, c, f = time.perf_counter(), time.process_time(), _minor_faults()
            step()
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000)
                cpu_times.append((time.process_time() - c) * 1000)
                faults.append(_minor_faults() - f)
            hwm.append(peak_mib())  # after the step's figures: which step raised the process's peak
        peak_timed = peak_mib()
        gm = GradientMeter(trainable_params, forward_of=model)
        sm = SavedTensorMeter(list(model.parameters()))
        sampler = StepSampler([model], trainable_params, sm, keep_samples=keep)
        gc.collect()
        s0 = sampler.sample("step start")
        sampler.start_timer()
        with _sampled_calls(sampler, opt, ("step", "zero_grad")), sm:
            step()
        gm.remove()
        sampler.remove()
        peak = peak_mib()
        stage("after_steps")
        phases = _module_phases(step, model, k, min(steps, 5))
        weights = sum(p.numel() for p in model.parameters())
        tb = _bytes(trainable_params)
        constant = {"frozen_weights": (_bytes(model.parameters()) - tb) / MiB, "frozen_session": 0.0,
                    "run_buffers": 0.0, "head_weights": tb / MiB,
                    "optimizer_state": sum(v.numel() * v.element_size() for st in opt.state.values()
                                           for v in st.values() if isinstance(v, torch.Tensor)) / MiB,
                    "buffer_masks": buffer_bytes / MiB,
                    "step_inputs": _bytes((xb, yb)) / MiB}
        info = {"backend": "torch", "threads": torch.get_num_threads()}
    times.sort()
    delta = peak - idle
    ledger, at_peak = partition_peak(delta, constant, s0, sampler.peak, m_idle, free_base, idle_parts, idle,
                                     rss_max=sampler.rss_peak.get("rss_rss") if sampler.rss_peak else None)
    # the step by whose end the process had reached its peak (0 = the first warm-up step; len(hwm) = the metered one)
    at_peak["peak_step"] = next((i for i, v in enumerate(hwm) if v >= peak - 1e-9), len(hwm))
    at_peak["steps_before_meter"] = len(hwm)
    at_peak["gradients_max_mib"] = gm.peak / MiB  # the most alive at once in the step (hooks), for comparison
    at_peak["activations_saved_mib"] = sm.nbytes / MiB  # all saved in the step; the row is what is alive at the peak
    at_peak["samples"] = sampler.count
    top = sampler.rss_peak  # where RSS itself was highest, for comparison
    at_peak["rss_max_where"], at_peak["rss_max_delta_mib"] = top["where"], top.get("rss_rss", idle) - idle
    if keep:  # every sample, for a closer look (a debugging aid)
        at_peak["all_samples"] = sampler.samples
    at_peak["malloc_source"] = mallinfo_source()
    return {
        "mode": mode, "steps": steps, "batch": int(len(xb)),
        "step_ms": statistics.median(times), "step_ms_p90": times[int(0.9 * (len(times) - 1))],
        "step_ms_mean": statistics.fmean(times), "step_cpu_ms": statistics.median(cpu_times),
        "step_minor_faults": int(statistics.median(faults)),
        "idle_rss_mib": idle, "peak_rss_mib": peak, "peak_rss_delta_mib": delta,
        # the same without the metered step (what earlier passes reported): the two differ by run-to-run noise
        "peak_rss_delta_timed_mib": peak_timed - idle,
        "theoretical_mib": theoretical_mib(weights, trainable, acts),
        "weights": weights, "trainable_params": trainable, "activations": acts, "extractor": info,
        "ledger_mib": ledger, "ledger_at": at_peak, "stages_mib": stages, "phases_ms": phases,
        # gradients kept from the previous step into the metered step's forward (0 for a loop that zeroes
        # them before the forward, as every mode here should): a hidden extra at the peak if not 0
        "gradients_carried_mib": gm.carried / MiB,
    }


def _inuse(m: dict) -> int:
    """malloc's bytes in use: heap chunks in use + blocks mmapped on their own."""
    return int(m["uordblks"]) + int(m["hblkhd"])


class _sampled_calls:
    """Sample before and after each call of ``obj.<name>`` (instance attributes shadow the methods; removed on
    exit): the extractor call and the optimizer step, where no module hook fires."""

    def __init__(self, sampler, obj, names) -> None:
        self.sampler, self.obj, self.names = sampler, obj, tuple(names)

    def __enter__(self):
        for n in self.names:
            fn = getattr(self.obj, n)

            def wrapped(*a, _fn=fn, _n=n, **kw):
                self.sampler.sample(f"call>{_n}")
                try:
                    return _fn(*a, **kw)
                finally:
                    self.sampler.sample(f"call<{_n}")
            setattr(self.obj, n, wrapped)
        return self

    def __exit__(self, *exc) -> None:
        for n in self.names:
            delattr(self.obj, n)


def partition_peak(delta: float, constant: dict, s0: dict, at: dict, m_idle: "dict | None", free_base: int,
                   idle_parts: dict, idle_rss: float, rss_max: "float | None" = None) -> "tuple[dict, dict]":
    """The ledger: the peak RSS delta (MiB above the idle process) split into measured parts, none counted twice.

    ``constant``: the parts alive through the whole step (weights, session, optimizer state, buffer, inputs),
    measured as tensor bytes or as malloc's in-use growth across the extractor's load/first run. ``s0``: the
    sample right before the metered step; ``at``: the step's sample where malloc's footprint is largest
    (:class:`lightcl.bench.accounting.StepSampler`). At ``at``, with glibc's accounting (``mallinfo2``):

    - malloc's in-use growth since idle = the constant rows + ``malloc_other`` (in use before the step and in no
      row: the data file's tensors, Python objects over 512 bytes, the learner's bookkeeping; the difference at
      ``s0``, less gradients still held then) + ``gradients`` and ``activations`` alive at ``at`` (gradient
      hooks, saved-tensor holders) +
      ``torch_temporaries`` (the in-use growth since ``s0`` that is neither: oneDNN scratch, autograd's
      intermediate gradients, the step's outputs and loss terms; no hook sees them, malloc does);
    - ``malloc_free``: bytes freed and kept by malloc (``fordblks`` growth since the last ``malloc_trim``: the
      heap a freed tensor, an onnxruntime run buffer or a session's load temporaries leave behind; onnxruntime's
      run buffers are freed after extraction, so at the head's peak they sit here and nowhere else);
    - ``library_pages``: resident pages of mapped files (``RssFile``) paged in since idle (library code/data);
    - ``peak_elsewhere``: the process's peak minus the highest RSS sampled in the metered step (``rss_max``): the
      peak was reached in another step (often a warm-up step, or a step whose heap layout the metered one did not
      reproduce), so no sample can take it apart; named, not hidden in ``unexplained``;
    - ``unexplained``: the rest, i.e. memory that is neither malloc's nor a file's: Python's own arenas (mmapped),
      thread stacks, libraries' private mmaps; and the RSS between the footprint's peak sample and RSS's own.

    The malloc in-use rows are taken at one moment (``at``), so they add up, unlike maxima of each part taken at
    different moments. Without mallinfo (not glibc) the malloc rows are ``None`` ("not available") and the
    session/run rows are RSS deltas. Returns (rows in MiB incl. ``unexplained``, ``peak_rss_delta`` and
    ``unexplained_share``; where the peak was sampled)."""
    MiB = float(1 << 20)
    rows = dict(constant)
    m0, m = s0.get("malloc"), at.get("malloc")
    rows["gradients"] = at["gradients"] / MiB
    rows["activations"] = at["activations"] / MiB
    held0 = (s0["gradients"] + s0["activations"]) / MiB  # e.g. gradients a loop keeps until its next zero_grad
    if m and m0 and m_idle:
        rows["malloc_other"] = (_inuse(m0) - _inuse(m_idle)) / MiB - sum(constant.values()) - held0
        rows["torch_temporaries"] = ((_inuse(m) - _inuse(m0)) / MiB - (rows["gradients"] + rows["activations"] - held0))
        rows["malloc_free"] = (m["fordblks"] - free_base) / MiB
    else:
        rows["malloc_other"] = rows["torch_temporaries"] = rows["malloc_free"] = None
    rows["library_pages"] = (at["rss_file"] - idle_parts["file"]) if "rss_file" in at and "file" in idle_parts else None
    rows["peak_elsewhere"] = max(0.0, delta - (rss_max - idle_rss)) if rss_max is not None else None
    rows["unexplained"] = delta - sum(v for v in rows.values() if v is not None)
    rows["peak_rss_delta"] = delta
    rows["unexplained_share"] = rows["unexplained"] / delta if delta > 0 else 0.0
    where = {"where": at["where"], "rss_delta_mib": at.get("rss_rss", idle_rss) - idle_rss,
             "malloc_footprint_delta_mib": ((m["arena"] + m["hblkhd"] - m_idle["arena"] - m_idle["hblkhd"]) / MiB
                                            if m and m_idle else None),
             "anon_delta_mib": at.get("rss_anon", 0.0) - idle_parts.get("anon", 0.0)}
    return rows, where


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _median_phases(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]} if samples else {}


def _engine_phases(learner, xb, yb, n: int) -> dict[str, float]:
    """Where the engine's step goes (median ms of ``n`` extra steps, after the timed ones): the extractor,
    the head's forward passes (buffer + batch), the optimizer's updates (inside backward with the
    per-parameter step), and the rest (loss, backward, bookkeeping). Wrappers time the real ``observe``."""
    clock = time.perf_counter
    acc = {"extract": 0.0, "head_forward": 0.0, "optimizer": 0.0}
    extract, opt = learner.extract, learner.optimizer
    update = getattr(opt, "_update", None)

    def timed_extract(x):
        t = clock()
        try:
            return extract(x)
        finally:
            acc["extract"] += clock() - t

    t_fwd = [0.0]
    h1 = learner.head.register_forward_pre_hook(lambda m, a: t_fwd.__setitem__(0, clock()))
    h2 = learner.head.register_forward_hook(lambda m, a, o: acc.__setitem__("head_forward", acc["head_forward"]
                                                                            + clock() - t_fwd[0]))
    learner.extract = timed_extract
    if update is not None:  # PerParameterSGD: each parameter's update, during backward
        def timed_update(p):
            t = clock()
            update(p)
            acc["optimizer"] += clock() - t
        opt._update = timed_update
    else:
        step = opt.step

        def timed_step(*a, **kw):
            t = clock()
            step(*a, **kw)
            acc["optimizer"] += clock() - t
        opt.step = timed_step
    samples = []
    try:
        for _ in range(n):
            for k in acc:
                acc[k] = 0.0
            t = clock()
            learner.observe(xb, yb)
            total = clock() - t
            samples.append({"total": total * 1e3, **{k: v * 1e3 for k, v in acc.items()},
                            "backward_rest": (total - sum(acc.values())) * 1e3})
    finally:
        del learner.extract
        h1.remove()
        h2.remove()
        if update is not None:
            del opt._update
        else:
            del opt.step
    return _median_phases(samples)


def _module_phases(step, model, k: int, n: int) -> dict[str, float]:
    """The same split for a whole-model step: the frozen blocks' forward (``blocks[:k+1]``), the rest of the
    forward, and backward + optimizer (what remains)."""
    clock = time.perf_counter
    acc = {"frozen_forward": 0.0}
    mark = [0.0]
    hs = [model.blocks[0].register_forward_pre_hook(lambda m, a: mark.__setitem__(0, clock())),
          model.blocks[k].register_forward_hook(lambda m, a, o: acc.__setitem__(
              "frozen_forward", acc["frozen_forward"] + clock() - mark[0]))]
    samples = []
    try:
        for _ in range(n):
            for key in acc:
                acc[key] = 0.0
            t = clock()
            step()
            total = clock() - t
            samples.append({"total": total * 1e3, "frozen_forward": acc["frozen_forward"] * 1e3,
                            "rest": (total - acc["frozen_forward"]) * 1e3})
    finally:
        for h in hs:
            h.remove()
    return _median_phases(samples)


def _frozen_params(export_dir):
    from lightcl.engine.export_dir import export_file, load_export_meta
    from lightcl.engine.frozen import load_frozen

    net, _ = load_frozen(export_file(export_dir, load_export_meta(export_dir, verify=False), "frozen.safetensors"))
    return list(net.parameters())


def prepare_data(export_dir: str | Path, batch: int, out: Path, data_path: str | None = None) -> Path:
    """Two real batches of the export's dataset (task A: classes 0,1; task B: classes 2,3), normalised."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from lightcl.data.datasets import load_dataset
    from lightcl.data.tasks import TensorData
    from lightcl.data.transforms import Preprocess
    from lightcl.engine.export_dir import load_export_meta

    meta = load_export_meta(export_dir, verify=False)
    # the export's input shape and resize rule (a zoo export: 3 x 32 x 32, stretch, as before)
    td = TensorData(load_dataset(meta["dataset"], "train", data_path), meta["input_shape"], meta.get("resize"))
    pre = Preprocess.from_meta(meta)
    rng = np.random.default_rng(0)
    y = td.y.numpy()
    tensors = {}
    for key, cls in (("a", [0, 1]), ("b", [2, 3])):
        idx = np.flatnonzero(np.isin(y, cls))
        idx = rng.choice(idx, size=batch, replace=len(idx) < batch)
        tensors[f"x{key}"] = pre(td.x[torch.as_tensor(idx)]).contiguous()
        tensors[f"y{key}"] = td.y[torch.as_tensor(idx)].contiguous()
    save_file(tensors, str(out))
    return out


def bench_update(export_dir: str | Path, batch: int = 32, steps: int = 30, warmup: int = 5,
                 modes: list[str] | None = None, threads: int | None = None, data_path: str | None = None,
                 echo=print, sparse_export: str | Path | None = None) -> dict:
    from lightcl.engine.errors import InputError
    from lightcl.engine.runtime_info import collect

    modes = modes or list(DEFAULT_MODES)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise InputError(f"unknown mode(s) {bad}; known: {', '.join(MODES)}")
    if batch < 1 or steps < 1 or warmup < 0:
        raise InputError(f"batch >= 1, steps >= 1 and warmup >= 0 are required (got {batch}, {steps}, {warmup})")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    needs_sparse = [m for m in modes if m in ENGINE_MODES and ENGINE_MODES[m][1] == "sparse"]
    if needs_sparse and not sparse_export:
        raise InputError(f"mode(s) {', '.join(needs_sparse)} need a pruned export: --sparse-export DIR "
                         "(make one with `lightcl export CKPT --sparsity authors`)")
    if sparse_export:
        from lightcl.engine.export_dir import load_export_meta

        sm = load_export_meta(sparse_export)  # one clear line here, not in a worker
        if not sm.get("sparsity"):
            raise InputError(f"--sparse-export {sparse_export} is not a pruned export (no 'sparsity' in its meta.json)")
        sparse_export = str(Path(sparse_export).absolute())
    int8_dirs = [export_dir if ENGINE_MODES[m][1] == "dense" else sparse_export for m in modes
                 if m in ENGINE_MODES and ENGINE_MODES[m][0] == "ort-int8"]
    for d in int8_dirs:
        if not (Path(d) / "frozen.int8.onnx").is_file():
            raise InputError(f"{d} has no frozen.int8.onnx: export with --int8 to bench an int8 mode")
    from lightcl.bench.worker import run_worker

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(export_dir, batch, Path(tmp) / "batch.safetensors", data_path)
        for m in modes:
            echo(f"bench update: {m} ({warmup} warm-up + {steps} steps, fresh process) ...")
            spec = {"mode": m, "export_dir": str(export_dir), "data_file": str(data), "steps": steps,
                    "warmup": warmup, "threads": threads, "sparse_export": sparse_export}
            run = run_worker("lightcl.bench.update:run_mode", spec, env=MODE_ENV.get(m, {}))
            results.append(run.raise_for_error(f"bench update worker {m}"))
    by = {r["mode"]: r for r in results}
    ratios = {}
    if "lightcl" in by and "finetune" in by:
        ratios["rss_lightcl_over_finetune"] = by["lightcl"]["peak_rss_delta_mib"] / max(1e-9, by["finetune"]["peak_rss_delta_mib"])
    if "lightcl" in by and "lightcl-reference" in by:
        ratios["step_lightcl_over_reference"] = by["lightcl"]["step_ms"] / by["lightcl-reference"]["step_ms"]
    ft = by.get("finetune", {}).get("peak_rss_delta_mib")
    for m in ("lightcl-sparse", "lightcl-sparse-int8", "lightcl-int8", "lightcl-plain", "lightcl-noarena",
              "lightcl-lean", "lightcl-lean-plain", "lightcl-sparse-lean", "lightcl-system", "lightcl-sparse-system",
              "lightcl-int8-system", "lightcl-whole", "lightcl-int8-whole", "lightcl-int8-lean", *OVERLAP_MODES):
        if m in by and ft:
            ratios[f"rss_{m}_over_finetune"] = by[m]["peak_rss_delta_mib"] / max(1e-9, ft)
    ftl = by.get("finetune-lean", {}).get("peak_rss_delta_mib")
    for m in ("lightcl", "lightcl-sparse", "lightcl-lean", "lightcl-sparse-lean"):
        if m in by and ftl:
            ratios[f"rss_{m}_over_finetune-lean"] = by[m]["peak_rss_delta_mib"] / max(1e-9, ftl)
    for m in ("lightcl-sparse", "lightcl-int8", "lightcl-sparse-int8", "lightcl-system", "lightcl-torch",
              "lightcl-whole", "lightcl-int8-whole", "lightcl-lean", "lightcl-int8-lean", *OVERLAP_MODES):
        if m in by and "lightcl-reference" in by:
            ratios[f"step_{m}_over_reference"] = by[m]["step_ms"] / by["lightcl-reference"]["step_ms"]
    env = collect()
    env["threads"] = threads
    from lightcl.engine.export_dir import load_export_meta
    from lightcl.engine.extractors import int8_unusable

    why_not = int8_unusable(load_export_meta(export_dir, verify=False))
    # what `lightcl learn --backend auto` learns with on a CPU (engine/extractors: LEARNING_AUTO)
    learning_default = {"backend": "ort" if why_not else "ort-int8", "why": why_not or "its int8 agreement check passed",
                        "mode": "lightcl" if why_not else "lightcl-int8"}
    return {"results": results, "ratios": ratios, "env": env, "sparse_export": sparse_export,
            "export": str(export_dir), "batch": batch, "steps": steps, "warmup": warmup,
            "learning_default": learning_default}


LEDGER_LABELS = {"frozen_weights": "frozen weights", "frozen_session": "runtime session (malloc in use)",
                 "run_buffers": "run buffers kept (malloc in use)", "head_weights": "trainable weights",
                 "gradients": "gradients alive at the peak", "optimizer_state": "optimizer state",
                 "activations": "saved activations alive at the peak", "buffer_masks": "buffer + masks",
                 "step_inputs": "step inputs + kept features", "malloc_other": "other malloc in use before the step",
                 "torch_temporaries": "step temporaries (malloc in use)", "malloc_free": "freed heap kept by malloc",
                 "library_pages": "library pages (file-backed RSS)",
                 "peak_elsewhere": "peak reached outside the metered step",
                 "unexplained": "unexplained (non-malloc anon, between samples)",
                 "peak_rss_delta": "peak RSS delta (measured)"}


def format_ledger(res: dict) -> str:
    """Where each mode's peak goes, MiB; one column per mode, theoretical figure beside it. A row glibc's
    accounting could not give is "n/a" (not glibc)."""
    rs = res["results"]
    w = max(12, *(len(r["mode"]) + 1 for r in rs))

    def cell(v, fmt="{:.1f}"):
        return f"{'n/a' if v is None else fmt.format(v):>{w}s}"

    lines = ["memory ledger (MiB above the idle process, at the step's sample where malloc's footprint is largest: "
             "tensor bytes, gradient and saved-tensor hooks, glibc mallinfo2, /proc RSS by kind)",
             f"{'':40s}" + "".join(f"{r['mode']:>{w}s}" for r in rs)]
    for key in (*LEDGER_ROWS, "unexplained", "peak_rss_delta"):
        lines.append(f"{LEDGER_LABELS[key]:40s}" + "".join(cell(r["ledger_mib"].get(key)) for r in rs))
    lines.append(f"{'unexplained share of the peak':40s}" + "".join(
        cell(100 * r["ledger_mib"]["unexplained_share"], "{:.1f}%") for r in rs))
    lines.append(f"{'theoretical (paper accounting)':40s}" + "".join(cell(r["theoretical_mib"]) for r in rs))
    at = [r.get("ledger_at") or {} for r in rs]
    lines.append(f"{'  gradients, most alive at once':40s}" + "".join(cell(a.get("gradients_max_mib")) for a in at))
    lines.append(f"{'  activations saved in the step':40s}" + "".join(cell(a.get("activations_saved_mib")) for a in at))
    lines.append(f"{'  RSS delta at the sample':40s}" + "".join(cell(a.get("rss_delta_mib")) for a in at))
    lines.append(f"{'  malloc footprint delta at the sample':40s}" + "".join(
        cell(a.get("malloc_footprint_delta_mib")) for a in at))
    for r, a in zip(rs, at):
        if a:
            lines.append(f"{r['mode']}: peak sampled at {a.get('where')} ({a.get('samples')} samples; malloc "
                         f"accounting: {a.get('malloc_source', 'n/a')}); the process's peak was reached by the end "
                         f"of step {a.get('peak_step')} ({a.get('steps_before_meter')} = the metered step, "
                         "0 = the first warm-up)")
    return "\n".join(lines)


def format_table(res: dict) -> str:
    lines = [f"{'mode':22s} {'step ms':>9s} {'p90 ms':>8s} {'CPU ms':>8s} {'faults':>7s} {'peak RSS delta MiB':>19s} "
             f"{'theoretical MiB':>16s}"]
    for r in res["results"]:
        lines.append(f"{r['mode']:22s} {r['step_ms']:9.1f} {r['step_ms_p90']:8.1f} {r.get('step_cpu_ms', float('nan')):8.1f} "
                     f"{r.get('step_minor_faults', -1):7d} {r['peak_rss_delta_mib']:19.1f} {r['theoretical_mib']:16.1f}")
    for k, v in res["ratios"].items():
        lines.append(f"{k}: {v:.3f}")
    ld = res.get("learning_default")
    if ld:
        lines.append(f"learning default on CPU (backend auto): {ld['backend']} ({ld['why']}; mode {ld['mode']})")
    for r in res["results"]:
        ph = r.get("phases_ms")
        if ph:
            lines.append(f"{r['mode']} step phases (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in ph.items()))
    for r in res["results"]:
        x = r.get("extractor") or {}
        if x.get("micro_batch") is not None or x.get("activation_bytes_per_image"):
            lines.append(f"{r['mode']} extraction: micro-batch {x.get('micro_batch') or 'whole batch'} images "
                         f"(budget {(x.get('memory_budget') or 0) / 2**20:.1f} MiB, estimated "
                         f"{(x.get('activation_bytes_per_image') or 0) / 2**20:.2f} MiB per image)")
    for r in res["results"]:
        i8 = (r.get("extractor") or {}).get("int8")
        if i8 and i8.get("forced"):
            lines.append(f"note: {r['mode']} runs an int8 model kept with --force (top-1 agreement "
                         f"{i8['top1_agreement']:.4f} < {i8['min_agreement']}): not a first-class backend here")
    return "\n".join(lines)
