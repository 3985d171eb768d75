"""Compression of stored frozen features for the replay memory: per-channel int8, or product quantisation.

Why: a byte budget holds 4x more int8 samples than float32 ones, and product quantisation (REMIND,
Hayes et al., ECCV 2020) holds ~8-32x more. Each codec turns a batch of features ``[N, C, H, W]`` into
a dict of per-sample code tensors (first dimension N) and back, and says exactly how many bytes one
sample and its fixed tables (codebooks) take, so the memory can keep a byte budget.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor

from .errors import InputError, IntegrityError

CODECS = ("int8", "pq", "fp32")


class Codec:
    """Encode/decode frozen features of one shape ``(C, H, W)``."""

    name = "codec"

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise InputError(f"a feature codec needs a [C, H, W] feature shape, got {list(shape)}")

    def fitted(self) -> bool:
        return True

    def fit(self, features: Tensor, generator: torch.Generator) -> None:
        """Learn the codec's tables from ``features`` (a no-op for codecs without tables)."""

    def encode(self, features: Tensor) -> Dict[str, Tensor]:
        raise NotImplementedError

    def decode(self, codes: Dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def code_spec(self) -> Dict[str, tuple]:
        """name -> (dtype, per-sample shape) of the code tensors."""
        raise NotImplementedError

    def sample_bytes(self) -> int:
        return sum(_numel(s) * torch.empty((), dtype=dt).element_size() for dt, s in self.code_spec().values())

    def tables(self) -> Dict[str, Tensor]:
        """Fixed tensors (codebooks) that count against the budget once."""
        return {}

    def table_bytes(self) -> int:
        """Bytes of the tables once fitted (known before fitting, so capacity is fixed from the start)."""
        return 0

    def load_tables(self, tables: Dict[str, Tensor], where: str) -> None:
        if tables:
            raise IntegrityError(f"{where}: the {self.name} codec has no tables, got {sorted(tables)}")

    def describe(self) -> dict:
        return {"codec": self.name, "sample_bytes": self.sample_bytes(), "table_bytes": self.table_bytes()}


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class Float32Codec(Codec):
    """No compression (the reference point)."""

    name = "fp32"

    def encode(self, features: Tensor) -> Dict[str, Tensor]:
        return {"f": features.detach().to("cpu", torch.float32).contiguous()}

    def decode(self, codes: Dict[str, Tensor]) -> Tensor:
        return codes["f"].float()

    def code_spec(self) -> Dict[str, tuple]:
        return {"f": (torch.float32, self.shape)}


class Int8ChannelCodec(Codec):
    """Symmetric int8 with one float16 scale per (sample, channel): ``q = round(x / s)``, ``s = max|x_c| / 127``.

    A per-sample scale needs no fitting and cannot drift as the stream changes; it costs 2 bytes per channel
    (256 bytes for 128 channels against 6,272 code bytes at 7x7).
    """

    name = "int8"

    def encode(self, features: Tensor) -> Dict[str, Tensor]:
        f = features.detach().to("cpu", torch.float32)
        amax = f.abs().amax(dim=(2, 3))
        scale = (amax / 127.0).to(torch.float16).float()
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(f / safe[:, :, None, None]).clamp_(-127, 127).to(torch.int8)
        return {"q": q.contiguous(), "scale": scale.to(torch.float16).contiguous()}

    def decode(self, codes: Dict[str, Tensor]) -> Tensor:
        return codes["q"].float() * codes["scale"].float()[:, :, None, None]

    def code_spec(self) -> Dict[str, tuple]:
        return {"q": (torch.int8, self.shape), "scale": (torch.float16, self.shape[:1])}


class ProductQuantizer(Codec):
    """REMIND's product quantisation: each spatial position's C-vector is cut into ``subvectors`` pieces,
    each replaced by the index (uint8) of its nearest of ``codes`` centroids (k-means on the first features
    seen). One sample costs ``H * W * subvectors`` bytes; the codebooks (float16) cost
    ``codes * C * 2`` bytes once."""

    name = "pq"

    def __init__(self, shape: Sequence[int], subvectors: int = 0, codes: int = 256, iters: int = 15) -> None:
        super().__init__(shape)
        c = self.shape[0]
        if subvectors == 0:  # REMIND uses 32 pieces of 16 for 512 channels; here pieces of 8 channels
            subvectors = max(1, c // 8)
        if isinstance(subvectors, bool) or not isinstance(subvectors, int) or subvectors < 1 or c % subvectors:
            raise InputError(f"pq subvectors must divide the {c} feature channels, got {subvectors!r}")
        if isinstance(codes, bool) or not isinstance(codes, int) or not 2 <= codes <= 256:
            raise InputError(f"pq codes must be an integer in [2, 256], got {codes!r}")
        self.m, self.k, self.iters = int(subvectors), int(codes), int(iters)
        self.d = c // self.m
        self.codebooks: Tensor | None = None  # [m, k, d] float16

    def fitted(self) -> bool:
        return self.codebooks is not None

    def _vectors(self, features: Tensor) -> Tensor:
        """[N, C, H, W] -> [N*H*W, m, d]"""
        f = features.detach().to("cpu", torch.float32)
        n, c, h, w = f.shape
        return f.permute(0, 2, 3, 1).reshape(n * h * w, self.m, self.d)

    def fit(self, features: Tensor, generator: torch.Generator) -> None:
        v = self._vectors(features)
        books = []
        for j in range(self.m):
            x = v[:, j, :]
            if x.shape[0] >= self.k:
                start = torch.randperm(x.shape[0], generator=generator)[: self.k]
            else:  # fewer vectors than codes: repeated centroids stay unused (the first of equals wins)
                start = torch.randint(x.shape[0], (self.k,), generator=generator)
            cent = x[start].clone()
            for _ in range(self.iters):
                assign = torch.cdist(x, cent).argmin(dim=1)
                sums = torch.zeros_like(cent).index_add_(0, assign, x)
                counts = torch.bincount(assign, minlength=self.k).float()
                empty = counts == 0
                cent = torch.where(empty[:, None], cent, sums / counts.clamp(min=1)[:, None])
            books.append(cent)
        self.codebooks = torch.stack(books).to(torch.float16)

    def encode(self, features: Tensor) -> Dict[str, Tensor]:
        if self.codebooks is None:
            raise InputError("pq codec used before its codebooks were fitted")
        n, _, h, w = features.shape
        v = self._vectors(features)
        books = self.codebooks.float()
        # the output first, each piece's [N*H*W, k] distances freed before the next: small results kept between
        # the large temporaries would fragment glibc's heap (+12-30 MiB of RSS kept per call after a trim)
        idx = torch.empty((v.shape[0], self.m), dtype=torch.uint8)
        for j in range(self.m):
            idx[:, j] = torch.cdist(v[:, j, :], books[j]).argmin(dim=1)
        return {"idx": idx.reshape(n, h, w, self.m)}

    def decode(self, codes: Dict[str, Tensor]) -> Tensor:
        idx = codes["idx"]  # [N, H, W, m]
        n, h, w, m = idx.shape
        books = self.codebooks.float()
        out = torch.empty((n, m * self.d, h, w), dtype=torch.float32)  # written in place: no [N, H, W, C] copies
        for j in range(m):
            out[:, j * self.d:(j + 1) * self.d] = books[j][idx[..., j].long()].permute(0, 3, 1, 2)
        return out

    def code_spec(self) -> Dict[str, tuple]:
        return {"idx": (torch.uint8, (self.shape[1], self.shape[2], self.m))}

    def tables(self) -> Dict[str, Tensor]:
        return {} if self.codebooks is None else {"codebooks": self.codebooks}

    def table_bytes(self) -> int:
        return self.m * self.k * self.d * 2

    def load_tables(self, tables: Dict[str, Tensor], where: str) -> None:
        extra = sorted(set(tables) - {"codebooks"})
        if extra:
            raise IntegrityError(f"{where}: unexpected pq tables {extra}")
        b = tables.get("codebooks")
        if b is None:
            self.codebooks = None
            return
        if b.dtype != torch.float16 or list(b.shape) != [self.m, self.k, self.d] or not bool(torch.isfinite(b.float()).all()):
            raise IntegrityError(f"{where}: pq codebooks must be finite float16 [{self.m}, {self.k}, {self.d}], "
                                 f"got {b.dtype} {list(b.shape)}")
        self.codebooks = b.clone()

    def describe(self) -> dict:
        return {**super().describe(), "subvectors": self.m, "codes": self.k}


def make_codec(name: str, shape: Sequence[int], pq_subvectors: int = 0) -> Codec:
    if name == "int8":
        return Int8ChannelCodec(shape)
    if name == "pq":
        return ProductQuantizer(shape, subvectors=pq_subvectors)
    if name == "fp32":
        return Float32Codec(shape)
    raise InputError(f"replay_codec must be one of {CODECS}, got {name!r}")
