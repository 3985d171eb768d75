"""The extractor template: the public call checks, the backend only runs.

Modelled on Polygraphy's ``BaseRunner`` (NVIDIA/TensorRT, ``tools/Polygraphy/polygraphy/backend/base/runner.py``
at commit 1637a26ebea458f810ec219cdcdaaac17603d9f9): there the public ``infer()`` checks the feed against the
runner's input metadata and hands it to ``infer_impl()``, the one method each runner writes. Here
:meth:`BaseExtractor.__call__` does, once for every backend, what each backend used to repeat (or forget):
input checks (type, layout, shape, dtype, finiteness, batch bound, device), serialisation of backends that
are not thread-safe, timing of the run, and a check of what the backend returned. A backend implements
:meth:`~BaseExtractor._open` (load its file, build its session) and :meth:`~BaseExtractor._run` (features of a
checked batch already on its device), and describes itself: ``name``, ``Options`` (a typed dataclass with
defaults whose construction validates), ``requires``/``install`` (what it needs installed) and ``info()``.

Lifetime, after Polygraphy's ``activate()``/``deactivate()`` and its ``with runner:`` form: the session is
built when the extractor is made (``_open``) and released by :meth:`BaseExtractor.close` (the backend's
``_close`` drops its session, engine or module), which ``with load_extractor(...) as ex:`` calls on exit.
Closing is idempotent and waits for a running call of a non-concurrent backend; a closed extractor refuses
to run with one line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, ContextManager, Mapping

import torch
from torch import Tensor

from ..errors import InputError, IntegrityError, NonFiniteError, ShapeError, StateError
from ..microbatch import activation_bytes_per_image, check_micro_batch, chunks, micro_batch_for_budget
from ..validate import check_tensor_kind, check_threads

# ---------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """A backend's options: one frozen dataclass per backend, fields with defaults, checked when built.

    Subclasses declare fields and override :meth:`validate`; building one with a bad value raises
    :class:`InputError` naming the option, so ``OrtOptions(threads=-1)`` and
    ``load_extractor(d, "ort", threads=-1)`` fail the same way.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse bad values with one line (subclasses)."""

    def exclusive(self) -> str | None:
        """Why only this backend can honour these options (``backend="auto"`` then tries no other), or None."""
        return None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(cls, backend: str, options: Mapping[str, Any]) -> "BackendOptions":
        """``cls(**options)``, except that an option this backend does not take is one clear line naming
        the ones it does (a TypeError from the dataclass said neither), and ``None`` means the default."""
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise InputError(f"unknown option(s) for backend {backend!r}: {', '.join(unknown)} "
                             f"(valid: {', '.join(sorted(cls.names())) or 'none'})")
        return cls(**{k: v for k, v in options.items() if v is not None})

    @classmethod
    def pick(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The part of ``options`` this backend takes (``None`` values dropped: they mean "the default")."""
        names = set(cls.names())
        return {k: v for k, v in options.items() if k in names and v is not None}

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def check_choice(name: str, value: Any, choices) -> None:
    if value not in tuple(choices):
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}")


def check_int(name: str, value: Any, low: int = 1, high: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"{name} must be an integer {bound}, got {value!r}")


def check_thread_option(name: str, value: Any) -> None:
    """``None`` or a thread count this machine can use (the engine's one bound)."""
    check_threads(value, name)


# ---------------------------------------------------------------- the template


class BaseExtractor:
    """One frozen part on one runtime: ``extractor(x)`` maps float32 ``[N, *input_shape]`` normalised images
    to float32 ``[N, *feature_shape]`` features without autograd history.

    Common state: ``meta`` (the export's meta.json), ``frozen_id``, ``input_shape``, ``feature_shape``,
    ``device``, ``options``, ``session_create_ms``, ``last_run_ms`` (wall time of the last ``_run``; on a
    GPU backend that does not synchronise, the enqueue time).
    """

    #: registry name (``load_extractor(d, backend=name)``)
    name: ClassVar[str] = ""
    #: one line for docs and ``--help``
    summary: ClassVar[str] = ""
    #: the typed options this backend takes
    Options: ClassVar[type] = BackendOptions
    #: modules it imports besides torch, and how to get them
    requires: ClassVar[tuple] = ()
    install: ClassVar[str] = ""
    #: ``backend="auto"`` rank per device type (lower is tried first); a type not listed: never chosen by auto
    auto_rank: ClassVar[dict] = {}
    #: False: ``_run`` must not run in two threads at once (the template serialises calls)
    concurrent: ClassVar[bool] = True

    def __init__(self, export_dir: str | Path, meta: dict[str, Any], device: torch.device | str,
                 options: BackendOptions | None = None, **kwargs: Any) -> None:
        """``options`` (this backend's ``Options``) or the same fields as keyword arguments."""
        if options is None:
            options = self.Options.build(self.name, kwargs)
        elif kwargs:
            raise InputError(f"backend {self.name!r}: pass options either as an {self.Options.__name__} or as "
                             "keywords, not both")
        elif not isinstance(options, self.Options):
            raise InputError(f"backend {self.name!r} takes {self.Options.__name__}, got {type(options).__name__}")
        self.options = options
        self.export_dir = Path(export_dir)
        self.meta = meta
        self.frozen_id: str = meta["frozen_id"]
        self.feature_shape: tuple[int, ...] = tuple(int(v) for v in meta["feature_shape"])
        self.input_shape: tuple[int, ...] = tuple(int(v) for v in meta["input_shape"])
        self.device = torch.device(device)
        self.max_batch: int | None = None  # a backend with a fixed profile (TensorRT) sets its bound
        self.micro_batch: int | None = None  # images per run (engine/microbatch.py); None: the whole batch
        self.memory_budget: int | None = None  # bytes the micro-batch was sized from, if it was
        self._per_image_bytes: int | None = None
        self.session_create_ms: float | None = None
        self.last_run_ms: float | None = None
        self._call_lock = threading.Lock()
        self.closed = False
        t0 = time.perf_counter()
        self._open(options)
        if self.session_create_ms is None:
            self.session_create_ms = (time.perf_counter() - t0) * 1e3

    # ------------------------------------------------------------ what a backend implements
    def _open(self, options: BackendOptions) -> None:  # pragma: no cover - abstract
        """Load the export's file and build the runtime session (may set ``session_create_ms``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _open")

    def _run(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Features of ``x``: a checked float32 batch, detached, already on :attr:`input_device`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _run")

    def _close(self) -> None:
        """Drop the runtime objects ``_open`` built (session, engine, module), in the order they must go.
        Default: nothing to release."""

    @classmethod
    def unavailable(cls, meta: dict[str, Any], device: torch.device) -> str | None:
        """Why this backend cannot run this export on ``device`` here (cheap, no session), or None.
        ``backend="auto"`` asks before trying; the default checks that ``requires`` import."""
        for module in cls.requires:
            if importlib.util.find_spec(module) is None:
                return f"{module} not importable"
        return None

    @classmethod
    def auto_defaults(cls, device: torch.device) -> dict[str, Any]:
        """Option values ``backend="auto"`` uses on ``device`` unless the caller gave them."""
        return {}

    def _guard(self) -> ContextManager:
        """Held around each ``_run``: the template's lock for backends that are not thread-safe."""
        return contextlib.nullcontext() if self.concurrent else self._call_lock

    @property
    def input_device(self) -> torch.device:
        """Where ``_run`` wants its input (the template moves it there)."""
        return self.device

    # ------------------------------------------------------------ the template
    @property
    def backend(self) -> str:
        return self.name

    def check_input(self, x: Any) -> Tensor:
        """Refuse what no backend can run, with one line; return ``x`` detached on :attr:`input_device`."""
        dims = ", ".join(map(str, self.input_shape))
        if not isinstance(x, Tensor):
            raise InputError(f"extractor input must be a torch.Tensor [N, {dims}], got {type(x).__name__}")
        check_tensor_kind(x, "extractor input")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"extractor expects [N, {dims}], got {list(x.shape)}")
        n = int(x.shape[0])
        if n == 0:
            raise ShapeError("extractor got an empty batch")
        if self.max_batch is not None and n > self.max_batch:
            raise ShapeError(f"batch {n} exceeds what backend {self.name!r} was built for (1..{self.max_batch}); "
                             "split the batch or rebuild with a larger --max-batch")
        if x.dtype != torch.float32:
            raise ShapeError(f"extractor expects float32 input (normalised images), got {x.dtype}")
        if x.device.type not in ("cpu", self.input_device.type):
            raise InputError(f"extractor input is on {x.device}; backend {self.name!r} runs on {self.device} "
                             "(give CPU tensors or tensors on that device)")
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError("extractor input contains NaN or Inf values")
        return x.detach().to(self.input_device, non_blocking=True)

    def check_output(self, out: Any, n: int) -> Tensor:
        """A backend (or a crafted model) that returns something else fails here, not in the head.
        Finiteness of the features is the learner's check: it also restores drifted BN statistics."""
        if not isinstance(out, Tensor) or out.dtype != torch.float32 or tuple(out.shape) != (n, *self.feature_shape):
            got = f"{out.dtype} {list(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            raise IntegrityError(f"backend {self.name!r} returned {got} for {n} images; meta.json says float32 "
                                 f"[{n}, {', '.join(map(str, self.feature_shape))}]")
        return out

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the session / engine now rather than whenever the garbage collector gets to it (a device
        swapping exports, a benchmark opening one backend after another). Idempotent; afterwards a call is
        refused with one line."""
        with self._call_lock:
            if self.closed:
                return
            self.closed = True
            self._close()

    def __enter__(self) -> "BaseExtractor":
        if self.closed:
            raise StateError(f"the {self.name} extractor of {self.export_dir} is closed: load it again")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __call__(self, x: Tensor) -> Tensor:
        if self.closed:
            raise StateError(f"the {self.name} extractor of {self.export_dir} is closed: load it again")
        x = self.check_input(x)
        n = int(x.shape[0])
        parts = chunks(n, self.micro_batch)
        with self._guard():
            t0 = time.perf_counter()
            if len(parts) == 1:
                out = self.check_output(self._run(x), n)
            else:  # micro-batched: each chunk's features written into one output, chunk buffers freed per run
                out = None
                for i, j in parts:
                    part = self.check_output(self._run(x[i:j]), j - i)
                    if out is None:
                        out = torch.empty((n, *self.feature_shape), dtype=part.dtype, device=part.device)
                    out[i:j] = part
                    del part
            self.last_run_ms = (time.perf_counter() - t0) * 1e3
        return out

    # ------------------------------------------------------------ micro-batching (engine/microbatch.py)
    def set_micro_batch(self, images: int | None) -> None:
        """Run batches in chunks of at most ``images`` (None: whole batches). Same features with eval-mode BN;
        refused for train-mode frozen BN (batch statistics)."""
        self.micro_batch = check_micro_batch(images, bool(getattr(self, "batch_statistics", False)))
        self.memory_budget = None

    def activation_bytes_per_image(self) -> int:
        """Estimated transient bytes of one image through the frozen part (the torch rebuild of
        ``frozen.safetensors``, loaded for the estimate and dropped; cached)."""
        if self._per_image_bytes is None:
            from ..export_dir import export_file
            from ..frozen import load_frozen

            net, _ = load_frozen(export_file(self.export_dir, self.meta, "frozen.safetensors"))
            self._per_image_bytes = activation_bytes_per_image(net, self.input_shape)
            del net
        return self._per_image_bytes

    def set_memory_budget(self, budget_bytes: int | None) -> int | None:
        """Size :attr:`micro_batch` so that one chunk's transient activations stay within ``budget_bytes``
        (None: whole batches). Returns the chunk size."""
        if budget_bytes is None:
            self.set_micro_batch(None)
            return None
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 1:
            raise InputError(f"memory budget must be a positive number of bytes, got {budget_bytes!r}")
        self.set_micro_batch(micro_batch_for_budget(self.activation_bytes_per_image(), budget_bytes))
        self.memory_budget = budget_bytes
        return self.micro_batch

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "device": str(self.device), "frozen_id": self.frozen_id,
                "feature_shape": list(self.feature_shape), "session_create_ms": self.session_create_ms,
                "max_batch": self.max_batch, "micro_batch": self.micro_batch, "memory_budget": self.memory_budget,
                "activation_bytes_per_image": self._per_image_bytes}

    def __repr__(self) -> str:
        i = self.info()
        return (f"<{type(self).__name__} backend={i.get('backend')} provider={i.get('provider')} "
                f"device={i.get('device')} frozen_id={self.frozen_id[:12]}>")
