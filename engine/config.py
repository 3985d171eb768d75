"""The learner's options (:class:`LightCLConfig`) and their checks, on their own so that whoever only reads or
checks options (the benchmark's method configs, a state's identity check) need not load the learner.

Defaults reproduce the authors' code; every departure is a named option. Python 3.8-compatible (device side).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError

BUFFER_POLICIES = ("new-task-first-batch", "reservoir")
OPTIMIZER_STEPS = ("per-parameter", "plain")
LOSS_SLICES = ("task", "all")


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
    # More updates per batch on replayed samples alone (head only), after the batch's own: more learning from the
    # memory for each new batch (REMIND takes one step per new sample), paid in compute, not in memory.
    replay_steps: int = 0
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
            for name in ("replay_batch", "replay_pq_subvectors", "replay_steps"):
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

