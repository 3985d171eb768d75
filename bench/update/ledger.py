"""The memory ledger of ``lightcl bench update``: one extra step metered at many sampled moments, and the peak RSS
delta split into measured parts (:func:`partition_peak` says how each is measured and why none is counted twice)."""
from __future__ import annotations

import gc
from contextlib import ExitStack
from pathlib import Path

LEDGER_ROWS = ("frozen_weights", "frozen_session", "run_buffers", "head_weights", "gradients", "optimizer_state",
               "activations", "buffer_masks", "step_inputs", "malloc_other", "torch_temporaries", "malloc_free",
               "library_pages", "peak_elsewhere")


def nbytes(params) -> int:
    """Bytes of the tensors ``params``."""
    return sum(p.numel() * p.element_size() for p in params)


def onnx_initializer_bytes(path: Path) -> int:
    """Bytes of an ONNX file's initializers: the weights an onnxruntime extractor holds (int8 included)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    total = 0
    for t in m.graph.initializer:
        total += len(t.raw_data) if t.raw_data else onnx.numpy_helper.to_array(t).nbytes
    return total


def frozen_params(export_dir):
    """The frozen part's parameters (torch), for the weight counts."""
    from lightcl.engine.export_dir import export_file, load_export_meta
    from lightcl.engine.frozen import load_frozen

    net, _ = load_frozen(export_file(export_dir, load_export_meta(export_dir, verify=False), "frozen.safetensors"))
    return list(net.parameters())


def inuse(m: dict) -> int:
    """malloc's bytes in use: heap chunks in use + blocks mmapped on their own."""
    return int(m["uordblks"]) + int(m["hblkhd"])


class IdleProcess:
    """What the figures are measured above: the worker right after its imports and warm-up, freed heap returned
    (the interpreter and libraries do not count). ``stage(name)`` records the RSS delta as the mode is built."""

    def __init__(self, input_shape) -> None:
        from lightcl.bench.meters import mallinfo, malloc_trim, rss_mib, rss_parts, warm_up

        self._rss_mib = rss_mib
        # the same idle baseline as the suite (its warm-up runs at the export's input shape): libraries
        # initialised, freed heap returned
        warm_up(tuple(input_shape))
        malloc_trim()
        self.rss = rss_mib()
        self.parts, self.malloc = rss_parts(), mallinfo()
        self.free_base = self.malloc["fordblks"] if self.malloc else 0  # free bytes right after the last trim (not resident)
        self.stages: dict[str, float] = {}

    def stage(self, name: str) -> None:
        gc.collect()
        self.stages[name] = self._rss_mib() - self.rss


class sampled_calls:
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
        rows["malloc_other"] = (inuse(m0) - inuse(m_idle)) / MiB - sum(constant.values()) - held0
        rows["torch_temporaries"] = ((inuse(m) - inuse(m0)) / MiB - (rows["gradients"] + rows["activations"] - held0))
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


class MeteredStep:
    """One extra step with the ledger's meters on (the timed steps ran without them): gradient and saved-tensor
    meters, memory samples at every hook and around ``calls`` (``[(obj, method names)]``), and the process's peak
    read right after it, before the accounting allocates anything."""

    def __init__(self, module, trainable: list, step, calls, keep_samples: bool) -> None:
        from lightcl.bench.accounting import GradientMeter, SavedTensorMeter, StepSampler
        from lightcl.bench.meters import peak_mib

        self.gradients = GradientMeter(trainable, forward_of=module)
        self.saved = SavedTensorMeter(list(module.parameters()))
        self.sampler = StepSampler([module], trainable, self.saved, keep_samples=keep_samples)
        gc.collect()
        self.start = self.sampler.sample("step start")
        self.sampler.start_timer()
        with ExitStack() as stack:
            for obj, names in calls:
                stack.enter_context(sampled_calls(self.sampler, obj, names))
            stack.enter_context(self.saved)
            step()
        self.gradients.remove()
        self.sampler.remove()
        # the peak the ledger splits: the timed steps' and the metered one's (one more of the same step)
        self.peak = peak_mib()


def take_apart(metered: MeteredStep, constant: dict, idle: IdleProcess, hwm: "list[float]",
               keep_samples: bool) -> "tuple[dict, dict]":
    """The ledger of the metered step's peak (:func:`partition_peak`) and where it was sampled, with the step by
    whose end the process had reached its peak (``hwm``: the process's peak after each timed step)."""
    from lightcl.bench.meters import mallinfo_source

    MiB = float(1 << 20)
    peak, sampler = metered.peak, metered.sampler
    ledger, at_peak = partition_peak(peak - idle.rss, constant, metered.start, sampler.peak, idle.malloc,
                                     idle.free_base, idle.parts, idle.rss,
                                     rss_max=sampler.rss_peak.get("rss_rss") if sampler.rss_peak else None)
    # the step by whose end the process had reached its peak (0 = the first warm-up step; len(hwm) = the metered one)
    at_peak["peak_step"] = next((i for i, v in enumerate(hwm) if v >= peak - 1e-9), len(hwm))
    at_peak["steps_before_meter"] = len(hwm)
    at_peak["gradients_max_mib"] = metered.gradients.peak / MiB  # the most alive at once in the step (hooks), for comparison
    at_peak["activations_saved_mib"] = metered.saved.nbytes / MiB  # all saved in the step; the row is what is alive at the peak
    at_peak["samples"] = sampler.count
    top = sampler.rss_peak  # where RSS itself was highest, for comparison
    at_peak["rss_max_where"], at_peak["rss_max_delta_mib"] = top["where"], top.get("rss_rss", idle.rss) - idle.rss
    if keep_samples:  # every sample, for a closer look (a debugging aid)
        at_peak["all_samples"] = sampler.samples
    at_peak["malloc_source"] = mallinfo_source()
    return ledger, at_peak
