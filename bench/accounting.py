"""Theoretical training memory by the paper's accounting: fp32 weights + gradients + optimizer state
+ activations of one batch (32, + the replayed buffer), in MiB.

Activations are the outputs of every leaf module (conv, BN, ReLU, linear, pooling) that the backward
pass needs: those of the trainable part, plus those of the frozen part only when the frozen part
sits *above* trainable layers (never, for LightCL's split).
"""
from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

from lightcl.engine.footprint import count_activations  # noqa: F401  (re-exported: bench's callers use it)

MIB = 2.0 ** 20


def theoretical_mib(weights: int, trainable: int, activations: int, optimizer_slots: int = 0) -> float:
    """All counts in elements; fp32 (4 bytes). optimizer_slots = extra state tensors per trainable weight."""
    return 4 * (weights + trainable * (1 + optimizer_slots) + activations) / MIB


# --------------------------------------------------------------------------- measured, for the ledger
class _Saved:
    """What the graph holds instead of a saved tensor while a :class:`SavedTensorMeter` is on: the tensor itself,
    in a holder the meter can see die (a weak reference), so the bytes *still held* at any moment are known."""

    __slots__ = ("t", "__weakref__")

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


class SavedTensorMeter:
    """Bytes autograd saves for backward during a ``with`` block (``saved_tensors_hooks``): every
    distinct storage packed, parameters excluded (they are weights, counted as such). ``nbytes``: all that was
    saved; ``alive_bytes()``: what the graph still holds now (backward frees each node's saved tensors as it
    runs, so at the step's peak only part of them may be left)."""

    def __init__(self, exclude: "list[torch.Tensor] | tuple" = ()) -> None:
        self._exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self._seen: dict[int, int] = {}
        self._held: list = []  # (weakref to holder, storage ptr)
        self._ctx = None

    def _pack(self, t: torch.Tensor):
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, meta)
            return t
        if ptr in self._exclude:
            return t
        if ptr not in self._seen:
            self._seen[ptr] = st.nbytes()
        h = _Saved(t)
        self._held.append((weakref.ref(h), ptr))
        return h

    @staticmethod
    def _unpack(h):
        return h.t if isinstance(h, _Saved) else h

    def __enter__(self) -> "SavedTensorMeter":
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self._seen.values())

    def alive_bytes(self) -> int:
        """Bytes of the distinct storages some graph node still holds (a storage saved by two nodes counts once)."""
        alive = {ptr for ref, ptr in list(self._held) if ref() is not None}
        return sum(self._seen[p] for p in alive)


class GradientMeter:
    """The most gradient bytes alive at once during backward, from post-accumulate-grad hooks: at each
    parameter's accumulation, the gradients still held plus this one (an optimizer hook that ran
    first and dropped it still had it a moment ago). With a plain step the last call sees them all.

    ``carried`` (with ``forward_of``, the module the step runs forward): the most gradient bytes held as a
    forward of that module starts, i.e. kept from the previous step into this step's forward (a loop that
    zeroes them after the forward, not before it); they sit beside the forward's activations at the peak,
    and no backward hook sees them."""

    def __init__(self, params, forward_of: "nn.Module | None" = None) -> None:
        self.params = list(params)
        self.peak = 0
        self.carried = 0
        self._handles = [p.register_post_accumulate_grad_hook(self._probe) for p in self.params]
        if forward_of is not None:
            self._handles.append(forward_of.register_forward_pre_hook(self._at_forward))

    def _alive(self) -> int:
        return sum(q.grad.numel() * q.grad.element_size() for q in self.params if q.grad is not None)

    def _at_forward(self, _module, _args) -> None:
        self.carried = max(self.carried, self._alive())

    def _probe(self, p: torch.Tensor) -> None:
        alive = self._alive()
        if p.grad is None:
            alive += p.numel() * p.element_size()
        self.peak = max(self.peak, alive)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class StepSampler:
    """Samples memory at many points of one step, to find and take apart the step's peak.

    Points: before and after every submodule's forward (module hooks), before each autograd node of a module's
    output runs in backward (``grad_fn.register_prehook``; no full backward hooks, which break in-place ReLU),
    after each parameter's gradient is accumulated (post-accumulate-grad hooks, after the optimizer's own hook:
    the per-parameter step's update has run), and wherever the caller calls :meth:`sample` (around the extractor
    and the optimizer step). Each sample holds RSS by kind (:func:`lightcl.bench.meters.rss_parts`), glibc's
    accounting (:func:`lightcl.bench.meters.mallinfo`), and the gradient and saved-activation bytes alive then.

    ``peak``: the sample where malloc's footprint (``arena + hblkhd``: heap got from the OS + blocks mmapped on
    their own) is largest (ties: the most bytes in use), or, without mallinfo, where RSS is largest. Malloc's
    footprint decides because the ledger splits the peak by malloc's own numbers, which are only consistent with
    each other at one moment. ``rss_peak``: the sample where RSS is largest.
    """

    def __init__(self, modules: "list[nn.Module]", params, saved: "SavedTensorMeter | None" = None,
                 keep_samples: bool = True) -> None:
        from lightcl.bench.meters import mallinfo

        self._mallinfo = mallinfo
        self.params = [p for p in params if p.requires_grad]
        self.saved = saved
        self.keep_samples = keep_samples
        self.samples: list[dict] = []
        self.count = 0
        self.peak: "dict | None" = None
        self.rss_peak: "dict | None" = None
        self.last = "start"  # the last hook point passed: where a timer sample falls
        self._last_grads = 0
        self._lock = threading.Lock()
        self._stop: "threading.Event | None" = None
        self._thread: "threading.Thread | None" = None
        self._handles: list = []
        for mod in modules:
            for name, m in mod.named_modules():
                self._handles.append(m.register_forward_pre_hook(self._before_forward(name)))
                self._handles.append(m.register_forward_hook(self._after_forward(name)))
        for i, p in enumerate(self.params):
            self._handles.append(p.register_post_accumulate_grad_hook(self._after_grad(i)))

    # hooks return None: a value returned by a forward pre-hook or a node pre-hook would replace the inputs
    def _before_forward(self, name: str):
        def hook(_m, _a) -> None:
            self.sample(f"forward>{name}")
        return hook

    def _after_grad(self, i: int):
        def hook(_p) -> None:
            self.sample(f"grad#{i}")
        return hook

    def _before_backward(self, name: str):
        def hook(_grads) -> None:
            self.sample(f"backward>{name}")
        return hook

    def _after_forward(self, name: str):
        def hook(_m, _a, out) -> None:
            self.sample(f"forward<{name}")
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                fn = getattr(t, "grad_fn", None)
                if fn is not None and hasattr(fn, "register_prehook"):
                    fn.register_prehook(self._before_backward(name))
        return hook

    def grad_bytes(self) -> int:
        """``.grad`` bytes held now; on the thread that runs the step only (see :meth:`sample`)."""
        total = 0
        for p in self.params:
            g = p.grad
            if g is not None:
                total += g.numel() * g.element_size()
        return total

    def sample(self, where: str, timer: bool = False) -> dict:
        from lightcl.bench.meters import rss_parts

        # The timer thread never reads ``p.grad``: the autograd engine sets it from C++ without the GIL, and copying
        # that tensor handle at the same moment races its reference count (seen: glibc "corrupted unsorted chunks").
        # A timer sample takes the gradient bytes of the last hook sample; a gradient made since then and not yet
        # handed to its parameter counts as a step temporary (it is one, until accumulated).
        grads = self._last_grads if timer else self.grad_bytes()
        s = {"where": f"timer after {self.last}" if timer else where,
             **{f"rss_{k}": v for k, v in rss_parts().items()}, "malloc": self._mallinfo(),
             "gradients": grads, "activations": self.saved.alive_bytes() if self.saved else 0}
        with self._lock:
            if not timer:
                self.last, self._last_grads = where, grads
            self.count += 1
            if self.keep_samples:
                self.samples.append(s)
            if self.peak is None or self._key(s) > self._key(self.peak):
                self.peak = s
            if self.rss_peak is None or s.get("rss_rss", 0.0) > self.rss_peak.get("rss_rss", 0.0):
                self.rss_peak = s
        return s

    def start_timer(self, interval_s: float = 0.001) -> None:
        """Also sample every ``interval_s`` from a thread: onnxruntime's run and torch's kernels release the GIL, so
        the thread sees inside them, where no hook can (an extractor's run buffers, a conv's scratch)."""
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.sample("", timer=True)

        self._thread = threading.Thread(target=loop, name="ledger-sampler", daemon=True)
        self._thread.start()

    def stop_timer(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    @staticmethod
    def _key(s: dict) -> tuple:
        """Footprint first; among samples at the same footprint (the heap stays at its high-water mark once a
        previous step reached it) the one with the most bytes in use, i.e. where this step's own data peak."""
        m = s["malloc"]
        if m:
            return (m["arena"] + m["hblkhd"], m["uordblks"] + m["hblkhd"])
        return (s.get("rss_rss", 0.0), 0)

    def remove(self) -> None:
        self.stop_timer()
        for h in self._handles:
            h.remove()
        self._handles = []


def bytes_as_elements(nbytes: int) -> int:
    """A buffer held in other dtypes (int8 codes, PQ indices, float16 scales) counted at its real bytes, in the
    fp32 elements :func:`theoretical_mib` takes (rounded up)."""
    return (int(nbytes) + 3) // 4
