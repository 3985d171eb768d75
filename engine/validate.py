"""Input checks at the engine's public entry points: clear, typed errors before any state changes."""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch
from torch import Tensor

from .errors import InputError, NonFiniteError, ShapeError, UnknownClassError


def check_images(x, expected_chw: Sequence[int] | None = None, what: str = "images") -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor [N, C, H, W], got {type(x).__name__}")
    check_tensor_kind(x, what)
    if x.dim() != 4:
        raise ShapeError(f"{what} must have rank 4 [N, C, H, W], got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{what}: empty batch")
    if not x.is_floating_point():
        raise ShapeError(f"{what} must be floating point (normalised), got dtype {x.dtype}")
    if expected_chw is not None and tuple(x.shape[1:]) != tuple(expected_chw):
        raise ShapeError(f"{what} must be [N, {', '.join(map(str, expected_chw))}], got {list(x.shape)}")
    if x.dtype != torch.float32:
        x = x.float()  # checked after the cast: 1e300 in float64 is Inf in float32
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"{what} contain NaN or Inf values (as float32)")
    return x


def check_labels(y, n: int, allowed: Sequence[int] | None = None) -> Tensor:
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(y)
        except Exception:
            raise InputError(f"labels must be a 1-D integer tensor, got {type(y).__name__}") from None
    check_tensor_kind(y, "labels")
    if y.dim() != 1 or y.shape[0] != n:
        raise ShapeError(f"labels must be a 1-D tensor of {n} values, got shape {list(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ShapeError(f"labels must be integers, got dtype {y.dtype}")
    y = y.long()
    if allowed is not None:
        bad = sorted(set(y.tolist()) - set(int(c) for c in allowed))
        if bad:
            raise UnknownClassError(f"labels {bad} are not among the current task's classes {sorted(allowed)}")
    return y


# ---------------------------------------------------------------- tensors the engine cannot use
def check_tensor_kind(x: Tensor, what: str) -> None:
    """Refuse tensors that pass shape checks and then fail deep inside torch with a multi-line report:
    nested, sparse or other non-strided layouts, and ``meta`` tensors (no data)."""
    if getattr(x, "is_nested", False):
        raise InputError(f"{what} must be a dense tensor, got a nested tensor")
    if x.layout != torch.strided:
        raise InputError(f"{what} must be a dense (strided) tensor, got layout {x.layout}")
    if x.device.type == "meta":
        raise InputError(f"{what} is on the 'meta' device (shape only, no data)")


# ---------------------------------------------------------------- resources: bounded by what the machine has
THREADS_PER_CPU = 4  # oversubscription beyond this only slows down; 100000 threads exhausted the process table


def machine_cpus() -> int:
    """CPUs this process may run on (affinity mask, cgroup-unaware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _positive_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError(f"{what} must be a positive integer, got {v!r}")
    return v


def check_threads(v, what: str = "threads") -> int | None:
    """``None`` or an integer in [1, THREADS_PER_CPU x CPUs of this machine]."""
    if v is None:
        return None
    _positive_int(v, what)
    cpus = machine_cpus()
    limit = THREADS_PER_CPU * cpus
    if v > limit:
        raise InputError(f"{what} {v} is more than this machine can use: it has {cpus} CPU(s); at most {limit}")
    return v


def check_batch(v, what: str = "batch size", bytes_per_sample: int | None = None, fraction: float = 0.8) -> int:
    """A positive integer whose memory (``v * bytes_per_sample``) fits in ``fraction`` of the available
    memory: ``bench update --batch 1000000`` used to end in an out-of-memory traceback."""
    _positive_int(v, what)
    avail = available_memory()
    if bytes_per_sample and avail and v * bytes_per_sample > fraction * avail:
        most = max(1, int(fraction * avail // bytes_per_sample))
        raise InputError(f"{what} {v} needs about {v * bytes_per_sample / 2**30:.1f} GiB "
                         f"({bytes_per_sample / 2**20:.2f} MiB per sample); this machine has "
                         f"{avail / 2**30:.1f} GiB available: at most {most}")
    return v


# ---------------------------------------------------------------- learner arguments (called by LightCL.__init__)
MAX_LR = 1e3  # a step this large already overflows float32 weights; 1e308 passed as "finite"
MAX_FACTOR = 1e6  # beta, weight decay: same reason
MAX_REPLAY_STEPS = 1000  # extra replay updates per batch: beyond this a step never ends in practice
SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed accepts


def check_learner_args(extractor, head, config) -> None:
    """What ``LightCLConfig.validate`` lets through and torch then fails on: a None extractor or head,
    seeds torch cannot take, numbers that overflow float32 at the first step, classifiers that cannot fit."""
    from .head import Head

    if extractor is None or not callable(extractor):
        raise InputError(f"extractor must be callable (images -> features), got {type(extractor).__name__}")
    if not isinstance(head, Head):
        raise InputError(f"head must be a lightcl Head (lightcl.engine.export_dir.load_head), got {type(head).__name__}")
    if not SEED_RANGE[0] <= config.seed <= SEED_RANGE[1]:
        raise InputError(f"seed must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {config.seed}")
    if config.lr > MAX_LR:
        raise InputError(f"lr must be <= {MAX_LR:g} (a larger step overflows float32 weights), got {config.lr:g}")
    for name in ("beta", "weight_decay"):
        if getattr(config, name) > MAX_FACTOR:
            raise InputError(f"{name} must be <= {MAX_FACTOR:g}, got {getattr(config, name):g}")
    if config.momentum > 1:
        raise InputError(f"momentum must be <= 1, got {config.momentum:g}")
    if config.buffer_size > 1 << 20:
        raise InputError(f"buffer_size must be <= {1 << 20}, got {config.buffer_size}")
    if config.replay_budget is not None:
        _check_replay_batch(head, config.replay_batch)
        if config.replay_steps > MAX_REPLAY_STEPS:
            raise InputError(f"replay_steps must be <= {MAX_REPLAY_STEPS} (updates per batch), got {config.replay_steps}")
    if config.num_classes is not None:
        feat = int(head.config.get("feat_dim", 1)) if isinstance(head.config, dict) else 1
        need = config.num_classes * (feat + 1) * 4 * 3  # weights, gradients, momentum
        avail = available_memory()
        if config.num_classes > 1 << 31 or (avail and need > 0.8 * avail):
            raise InputError(f"num_classes {config.num_classes} needs a classifier of {need / 2**30:.1f} GiB; "
                             f"this machine has {(avail or 0) / 2**30:.1f} GiB available")


def _check_replay_batch(head, k: int) -> None:
    """Each step decodes ``k`` replayed features and runs them through the head with gradients: a replay batch
    of a million used to end in an out-of-memory kill at the first step, not in a message."""
    if k > 1 << 20:
        raise InputError(f"replay_batch must be <= {1 << 20}, got {k}")
    shape = getattr(head, "in_features", None)
    per_sample = 4 * 3 * math.prod(int(s) for s in shape) if shape else 0  # decoded features, grads, workspace
    check_batch(k, "replay_batch", per_sample or None)
