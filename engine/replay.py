"""Feature replay under a byte budget: compressed frozen features of past samples, replayed through the head.

Why: LightCL's cross-entropy never contrasts new classes with old ones, so its class-incremental accuracy
stays low; replaying a few stored *frozen features* (never images: the frozen part never runs again)
with every batch, cross-entropy over every seen class, fixes that at the cost of the buffer's bytes.
The buffer is sized in bytes, not samples (``replay_budget="2MiB"``), so a codec that compresses better
(engine/codecs.py: int8, REMIND's product quantisation) holds more samples under the same budget.

Storage and eviction are class-balanced (CBRS, Chrysakis & Moens, ICML 2020): while the memory has room
every sample is kept; once full, a sample of a class that is not among the largest replaces a random
sample of a largest class, and a sample of a largest class replaces one of its own class with
probability (stored / seen) of that class. Sampling for replay is class-balanced too (each class drawn
equally often). Labels are stored as logit columns, which never change once given.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from .codecs import Codec, make_codec
from .errors import InputError, IntegrityError
from .losses import LossComponent, LossContext, sliced_cross_entropy

LABEL_DTYPE = torch.int64
_UNITS = {"B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3}
_BYTES = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)\s*$")


def parse_bytes(value: Any, what: str = "replay_budget") -> int:
    """``"2MiB"``, ``"512KiB"``, ``"1.5MB"``, ``"4096B"`` or a positive int -> bytes (rounded down).

    Units are required in a string, and must be one of B, KiB, MiB, GiB (binary) or kB, MB, GB (decimal)."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be a size like '2MiB' or a number of bytes, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _BYTES.match(value)
        unit = m.group(2).upper() if m else ""
        if not m or unit not in _UNITS:
            raise InputError(f"{what} must be a size like '2MiB', '512KiB', '1.5MB' or '4096B', got {value!r}")
        n = int(float(m.group(1)) * _UNITS[unit])
    else:
        raise InputError(f"{what} must be a size like '2MiB' or a number of bytes, got {value!r}")
    if n < 1 or n >= 1 << 62:
        raise InputError(f"{what} must be at least 1 byte and below 4 EiB, got {value!r}")
    return n


def format_bytes(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


class ReplayMemory:
    """Compressed frozen features + their logit columns, never more than ``budget`` bytes in all
    (codes + labels + codec tables; ``nbytes()`` counts exactly the tensors held)."""

    def __init__(self, budget: int, codec: Codec, seed: int = 0) -> None:
        self.budget = int(budget)
        self.codec = codec
        self.per_sample = codec.sample_bytes() + torch.empty((), dtype=LABEL_DTYPE).element_size()
        room = self.budget - codec.table_bytes()
        self.capacity = room // self.per_sample if room > 0 else 0
        if self.capacity < 1:
            raise InputError(f"replay budget {format_bytes(self.budget)} holds no sample: one costs "
                             f"{self.per_sample} bytes with the {codec.name} codec, plus {codec.table_bytes()} "
                             f"bytes of tables for features {list(codec.shape)}")
        # storage for `capacity` samples, allocated on the first sample and filled in place: growing it a sample
        # at a time (torch.cat) copied the whole memory for every new sample and churned the heap
        self._codes: Dict[str, Tensor] = {}
        self._labels: Optional[Tensor] = None
        self._n = 0
        self.seen: Dict[int, int] = {}  # column -> samples of that class offered
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def empty_like(self) -> "ReplayMemory":
        """A new empty memory with the same budget, codec kind and seed."""
        return ReplayMemory(self.budget, make_codec(self.codec.name, self.codec.shape, getattr(self.codec, "m", 0)),
                            seed=self.seed)

    def __len__(self) -> int:
        return self._n

    @property
    def codes(self) -> Dict[str, Tensor]:
        """The held samples' codes (views of the storage, ``[len, ...]`` each)."""
        return {k: v[: self._n] for k, v in self._codes.items()} if self._n else {}

    @property
    def labels(self) -> Optional[Tensor]:
        """The held samples' logit columns ``[len]`` (a view of the storage), None while empty."""
        return self._labels[: self._n] if self._n else None

    def nbytes(self) -> int:
        held = dict(self.codes)
        held.update({f"t.{k}": v for k, v in self.codec.tables().items()})
        if self.labels is not None:
            held["labels"] = self.labels
        return sum(v.numel() * v.element_size() for v in held.values())

    def describe(self) -> dict:
        return {"budget_bytes": self.budget, "bytes": self.nbytes(), "samples": len(self), "capacity": self.capacity,
                "bytes_per_sample": self.per_sample, **self.codec.describe()}

    # ---- storage
    def add(self, features: Tensor, columns: Tensor) -> None:
        """Offer a batch (frozen features ``[N, C, H, W]``, logit columns ``[N]``) to the memory."""
        if features.shape[0] == 0:
            return
        if tuple(features.shape[1:]) != self.codec.shape:
            raise InputError(f"replay memory holds features {list(self.codec.shape)}, got {list(features.shape[1:])}")
        if not self.codec.fitted():
            self.codec.fit(features, self.generator)
        codes = self.codec.encode(features)
        cols = columns.detach().to("cpu", LABEL_DTYPE)
        for i in range(features.shape[0]):
            y = int(cols[i])
            self.seen[y] = self.seen.get(y, 0) + 1
            if len(self) < self.capacity:
                self._append({k: v[i: i + 1] for k, v in codes.items()}, cols[i: i + 1])
                continue
            counts = torch.bincount(self.labels)
            largest = int(counts.max())
            if y >= counts.numel() or int(counts[y]) < largest:
                big = (counts == largest).nonzero().flatten()
                victim_class = int(big[torch.randint(len(big), (1,), generator=self.generator)])
            else:
                if float(torch.rand((), generator=self.generator)) >= int(counts[y]) / self.seen[y]:
                    continue
                victim_class = y
            slots = (self.labels == victim_class).nonzero().flatten()
            slot = int(slots[torch.randint(len(slots), (1,), generator=self.generator)])
            for k, v in codes.items():
                self._codes[k][slot] = v[i]
            self._labels[slot] = y

    def _allocate(self) -> None:
        """Storage for ``capacity`` samples; torch.empty leaves pages untouched, so RSS grows as they are filled."""
        self._codes = {k: torch.empty((self.capacity, *shp), dtype=dt) for k, (dt, shp) in self.codec.code_spec().items()}
        self._labels = torch.empty((self.capacity,), dtype=LABEL_DTYPE)

    def _append(self, codes: Dict[str, Tensor], label: Tensor) -> None:
        if self._labels is None:
            self._allocate()
        for k, v in codes.items():
            self._codes[k][self._n] = v[0]
        self._labels[self._n] = label[0]
        self._n += 1

    def sample(self, k: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``k`` samples drawn class-balanced (without replacement when the memory holds ``k``): features
        decoded to float32, and their logit columns."""
        counts = torch.bincount(self.labels).float()
        w = 1.0 / counts[self.labels]
        k = int(k)
        idx = torch.multinomial(w, k, replacement=k > len(self), generator=self.generator)
        feats = self.codec.decode({n: v[idx] for n, v in self.codes.items()})
        return feats.to(device), self.labels[idx].to(device)

    def class_counts(self) -> Dict[int, int]:
        if self.labels is None:
            return {}
        u, c = torch.unique(self.labels, return_counts=True)
        return {int(a): int(b) for a, b in zip(u, c)}

    # ---- state
    def state_dict(self) -> Dict[str, Any]:
        """Tensors ``code.<name>``, ``labels``, ``table.<name>``, ``rng``; JSON ``seen`` ([column, count]),
        ``codec``, ``budget``."""
        out: Dict[str, Any] = {f"code.{k}": v for k, v in self.codes.items()}
        out.update({f"table.{k}": v for k, v in self.codec.tables().items()})
        if self.labels is not None:
            out["labels"] = self.labels
        out["rng"] = self.generator.get_state()
        out = {k: v.detach().cpu().contiguous() for k, v in out.items()}
        out.update(seen=[[c, n] for c, n in sorted(self.seen.items())], codec=self.codec.name, budget=self.budget)
        return out

    def load_state_dict(self, state: Mapping[str, Any], known_columns: Optional[Iterable[int]] = None,
                        where: str = "replay state") -> None:
        """Replace the memory by ``state`` after checking every entry; IntegrityError and no change on a bad one."""
        state = dict(state)
        if state.get("codec") != self.codec.name or state.get("budget") != self.budget:
            raise IntegrityError(f"{where}: made with codec {state.get('codec')!r} and budget {state.get('budget')!r}, "
                                 f"this learner has {self.codec.name!r} and {self.budget}")
        seen = state.get("seen")
        if not isinstance(seen, list) or any(
                not isinstance(p, list) or len(p) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 0
                                                              for x in p) for p in seen):
            raise IntegrityError(f"{where}: seen must be a list of [column, count] non-negative integer pairs")
        rng = state.get("rng")
        ref = torch.Generator().get_state()
        if not isinstance(rng, Tensor) or rng.dtype != ref.dtype or rng.shape != ref.shape:
            raise IntegrityError(f"{where}: rng is not a generator state")
        known = {"codec", "budget", "seen", "rng", "labels"}
        codes = {k[len("code."):]: v for k, v in state.items() if k.startswith("code.")}
        tables = {k[len("table."):]: v for k, v in state.items() if k.startswith("table.")}
        bad = sorted(k for k in state if k not in known and not k.startswith(("code.", "table.")))
        if bad:
            raise IntegrityError(f"{where}: unexpected entries {bad}")
        if any(not isinstance(v, Tensor) for v in (*codes.values(), *tables.values())):
            raise IntegrityError(f"{where}: codes and tables must be tensors")
        labels = state.get("labels")
        spec = self.codec.code_spec()
        if labels is None:
            if codes:
                raise IntegrityError(f"{where}: codes without labels")
            n = 0
        else:
            if not isinstance(labels, Tensor) or labels.dtype != LABEL_DTYPE or labels.dim() != 1:
                raise IntegrityError(f"{where}: labels must be int64 [N]")
            n = int(labels.shape[0])
            if n > self.capacity:
                raise IntegrityError(f"{where}: {n} samples for a budget that holds {self.capacity}")
            if sorted(codes) != sorted(spec):
                raise IntegrityError(f"{where}: codes {sorted(codes)}, the {self.codec.name} codec has {sorted(spec)}")
            for name, (dt, shp) in spec.items():
                v = codes[name]
                if v.dtype != dt or tuple(v.shape) != (n, *shp) or (v.is_floating_point() and not bool(torch.isfinite(v).all())):
                    raise IntegrityError(f"{where}: code.{name} must be {dt} {[n, *shp]}, got {v.dtype} {list(v.shape)}")
            if known_columns is not None and not set(labels.tolist()) <= set(known_columns):
                raise IntegrityError(f"{where}: labels hold logit columns of classes the state never learned")
            if n and self.codec.name == "pq" and "codebooks" not in tables:
                raise IntegrityError(f"{where}: pq codes without their codebooks")
        probe = make_codec(self.codec.name, self.codec.shape, getattr(self.codec, "m", 0))
        probe.load_tables(tables, where)  # checks the tables before anything changes
        self.codec = probe
        self._codes, self._labels, self._n = {}, None, 0
        if n:
            self._allocate()
            for k, v in codes.items():
                self._codes[k][:n] = v
            self._labels[:n] = labels
            self._n = n
        self.seen = {int(c): int(k) for c, k in seen}
        self.generator.set_state(rng)


class FeatureReplay(LossComponent):
    """Cross-entropy over every seen class on ``batch_size`` replayed samples, run through the head only.

    After each successful step the batch's frozen features are offered to the memory (``after_step``). It is
    ``separable``: the step backwards it after the batch's loss, so the replayed samples' activations never sit
    in memory beside the batch's."""

    name = "replay"
    separable = True

    def __init__(self, memory: ReplayMemory, batch_size: int = 32, weight: float = 1.0) -> None:
        super().__init__(weight)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"replay_batch must be a positive integer, got {batch_size!r}")
        self.memory = memory
        self.batch_size = int(batch_size)

    def __call__(self, context: LossContext) -> Tensor:
        if len(self.memory) == 0 or context.head is None or self.weight == 0:
            return torch.zeros((), device=context.logits.device)
        feats, cols = self.memory.sample(self.batch_size, device=context.logits.device)
        logits = context.head(feats)
        seen = context.seen_columns if context.seen_columns is not None else list(range(logits.shape[1]))
        return sliced_cross_entropy(logits, cols, seen)

    def after_step(self, context: LossContext) -> None:
        self.memory.add(context.features, context.target_index)


def make_replay(budget: Any, codec: str, shape: Sequence[int], batch_size: int, weight: float, seed: int,
                pq_subvectors: int = 0) -> FeatureReplay:
    """The learner's replay component from its options."""
    return FeatureReplay(ReplayMemory(parse_bytes(budget), make_codec(codec, shape, pq_subvectors), seed=seed),
                         batch_size=batch_size, weight=weight)
