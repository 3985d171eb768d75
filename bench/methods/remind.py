"""``remind``: REMIND (Hayes et al., ECCV 2020), restated from the authors' code on the suite's frozen part and head.

An independent baseline: it shares nothing with the engine's replay memory (engine/replay.py, engine/codecs.py);
its quantiser is the one REMIND uses, ``faiss.ProductQuantizer``. Read from github tyler-hayes/REMIND at commit
5d619a8: ``image_classification_experiments/REMINDModel.py`` (``fit_incremental_batch``: the streaming loop),
``imagenet_base_initialization.py`` (``fit_pq``), ``utils.py`` (``RandomResizeCrop``) and
``run_imagenet_experiment.sh`` (the values, bench/configs/remind.json).

Their protocol, mapped onto the suite's stream:

* **Base initialisation = task 1.** REMIND first trains its network offline on the base classes, fits the PQ on
  their mid-level features and stores every base sample's codes. Here the head trains on task 1's batches with
  plain cross-entropy (SGD at ``base_lr``), the frozen features of each task-1 image are kept the first time it
  is seen, and at the end of task 1 the PQ is trained on them and every one is encoded into the buffer.
* **Streaming = tasks 2..T, one new sample at a time.** Each new sample is quantised; it and ``2 x
  replay_samples`` codes drawn uniformly from the buffer are decoded, each randomly resize-cropped in feature
  space, the two replayed halves mixed up (one ``lam ~ Beta(alpha, alpha)`` per step), and one SGD step
  (momentum, weight decay) is taken on ``lam CE(., y_a) + (1 - lam) CE(., y_b)`` over every output. Then the
  sample enters the buffer under its dataset index (seen again in a later epoch, it replaces its own entry);
  when the buffer is full, a random entry of the class with the most entries leaves.
* **Step size per class**: ``start_lr * gamma ** (n_y // lr_step_size)``, ``n_y`` the samples of the new
  sample's class trained so far, ``gamma`` reaching ``end_lr`` after the class's samples in the stream (theirs:
  a ``StepLR`` per class, 1,300 ImageNet images per class; here the task's training samples per class times
  the epochs). This is the closed form their per-class schedulers computed in the PyTorch of 2020.
* **Prediction** quantises and reconstructs the test features before the head, as theirs does.
* **The buffer** holds codes (uint8, ``H*W`` positions x ``C / channels_per_codebook`` codebooks) and an int64
  label per sample under a byte budget (``replay_budget``, codebooks counted), instead of their sample count.

What is not theirs: the suite's epochs (every method gets the same passes; REMIND streams once), the suite's
augmented views as the stored features, and the byte budget.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightcl.engine.errors import InputError

from .base import Batch, Method, Step, n_params, register_method
from .configs import RemindConfig
from .engine_common import extractor_and_head

try:  # imported with the module, so the library belongs to the suite's idle process like torch's (bench/suite.py)
    import faiss
except ImportError:  # pragma: no cover - the bench extra installs it
    faiss = None

LABEL_BYTES = 8  # an int64 label per stored sample
ENCODE_ROWS = 1024  # vectors per faiss compute_codes call: a distance table of 1024 x M x 256 floats (8 MiB at M=8)


def _faiss():
    if faiss is None:  # pragma: no cover
        raise InputError("the remind baseline needs faiss (REMIND's quantiser): pip install faiss-cpu "
                         "(it is in the bench extra: pip install 'lightcl[bench]')")
    return faiss


def crop_params(h: int, w: int, scale: tuple[float, float], rng: np.random.Generator,
                ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop of an ``h x w`` map: REMIND's ``RandomResizeCrop.
    get_params`` (torchvision's), ten tries then the central fallback. A crop of no pixel (a scale so small that
    it rounds to 0) is retried as torchvision does; REMIND's copy would crash on it (not reachable at 2/7)."""
    area = h * w
    for _ in range(10):
        target = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(w / min(ratio))
    elif in_ratio > max(ratio):
        ch, cw = h, int(h * max(ratio))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crops(feats: Tensor, scale: tuple[float, float], rng: np.random.Generator) -> Tensor:
    """Each ``[C, H, W]`` map cropped at random and resized back to ``H x W`` (bilinear, as REMIND)."""
    n, _, h, w = feats.shape
    out = torch.empty_like(feats)
    for i in range(n):
        top, left, ch, cw = crop_params(h, w, scale, rng)
        out[i] = F.interpolate(feats[i: i + 1, :, top: top + ch, left: left + cw], size=(h, w), mode="bilinear",
                               align_corners=False)[0]
    return out


class PQBuffer:
    """REMIND's latent dictionary: PQ codes + labels keyed by dataset index, under a byte budget."""

    def __init__(self, shape: tuple[int, int, int], budget: int, codebook_size: int, channels_per_codebook: int,
                 threads: int) -> None:
        c, h, w = shape
        if channels_per_codebook < 1:
            raise InputError(f"remind: channels_per_codebook must be at least 1, got {channels_per_codebook}")
        # a feature whose channels it does not divide (MobileNetV2's 24, 96, ...) gets the largest divisor below it
        channels_per_codebook = max(d for d in range(1, min(channels_per_codebook, c) + 1) if c % d == 0)
        if codebook_size not in (2, 4, 16, 256):
            raise InputError(f"remind: codebook_size must be 2, 4, 16 or 256 (codes of 1, 2, 4 or 8 bits), "
                             f"got {codebook_size}")
        self.faiss = _faiss()
        self.faiss.omp_set_num_threads(max(1, int(threads)))
        self.shape, self.positions = (c, h, w), h * w
        self.m = c // channels_per_codebook
        self.pq = self.faiss.ProductQuantizer(c, self.m, int(math.log2(codebook_size)))
        self.code_bytes = self.pq.code_size * self.positions
        self.table_bytes = codebook_size * c * 4  # float32 centroids: ksub x M x dsub
        self.per_sample = self.code_bytes + LABEL_BYTES
        self.capacity = (budget - self.table_bytes) // self.per_sample
        if self.capacity < 1:
            raise InputError(f"remind: a replay budget of {budget} bytes holds no sample ({self.per_sample} bytes "
                             f"each, {self.table_bytes} bytes of codebooks)")
        self.budget, self.trained = int(budget), False
        self.codes = np.zeros((self.capacity, self.code_bytes), dtype=np.uint8)  # the budget, held from the start
        self.labels = np.zeros((self.capacity,), dtype=np.int64)
        self.slot: dict[int, int] = {}  # dataset index -> row
        self.key: list[int] = []  # row -> dataset index

    def __len__(self) -> int:
        return len(self.key)

    def nbytes(self) -> int:
        """Bytes held: every row of the budget (allocated up front) and the codebooks once trained."""
        return self.capacity * self.per_sample + (self.table_bytes if self.trained else 0)

    def _rows(self, feats: Tensor) -> np.ndarray:  # [N, C, H, W] -> [N*H*W, C] (REMIND's transpose + reshape)
        return np.ascontiguousarray(feats.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).numpy()
                                    .reshape(-1, self.shape[0]))

    def train(self, rows: np.ndarray) -> None:
        """Fit the quantiser on ``[N*H*W, C]`` float32 rows (REMIND's ``fit_pq``: ``pq.train``)."""
        self.pq.train(rows)
        self.trained = True

    def encode(self, feats: Tensor) -> np.ndarray:
        return self.encode_rows(self._rows(feats)).reshape(len(feats), self.code_bytes)

    def encode_rows(self, rows: np.ndarray) -> np.ndarray:
        """Codes of ``[N*H*W, C]`` rows, ``ENCODE_ROWS`` at a time: faiss builds a distance table of ``rows x M x
        ksub`` floats per call (for 16-channel pieces), 420 MiB for one task's 51,200 vectors at once; REMIND's
        ``fit_pq`` encodes in batches too. The codes are the same."""
        out = np.empty((len(rows), self.pq.code_size), dtype=np.uint8)
        for i in range(0, len(rows), ENCODE_ROWS):
            out[i: i + ENCODE_ROWS] = self.pq.compute_codes(rows[i: i + ENCODE_ROWS])
        return out

    def decode(self, codes: np.ndarray) -> Tensor:
        c, h, w = self.shape
        rows = self.pq.decode(np.ascontiguousarray(codes).reshape(-1, self.pq.code_size))
        return torch.from_numpy(rows.reshape(-1, h, w, c)).permute(0, 3, 1, 2).contiguous()

    def reconstruct(self, feats: Tensor) -> Tensor:
        return self.decode(self.encode(feats))

    def put(self, key: int, code: np.ndarray, label: int, rng: np.random.Generator) -> None:
        """Store (or replace) sample ``key``; when full, a random entry of the largest class leaves first."""
        if key in self.slot:
            row = self.slot[key]
        elif len(self) < self.capacity:
            row = len(self)
            self.key.append(key)
        else:
            labels = self.labels[: len(self)]
            rows = np.flatnonzero(labels == int(np.argmax(np.bincount(labels))))
            row = int(rows[rng.integers(len(rows))])
            del self.slot[self.key[row]]
            self.key[row] = key
        self.codes[row], self.labels[row] = code, label
        self.slot[key] = row

    def draw(self, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``k`` entries drawn uniformly, without replacement while the buffer holds ``k`` (REMIND's ``randint``)."""
        idx = rng.choice(len(self), size=k, replace=k > len(self))
        return self.codes[idx], self.labels[idx]


@register_method
class Remind(Method):
    name = "remind"
    summary = "REMIND (Hayes et al. 2020): PQ-coded mid-level features, streaming replay, feature augmentation"
    config_class = RemindConfig
    trains = "head (deep layers + classifier)"
    cost = 1.0
    needs_export = True
    wants_ids = True
    main_part = "head"

    def __init__(self, ctx, **hp) -> None:
        super().__init__(ctx, **hp)
        from lightcl.engine.replay import parse_bytes

        c = self.config
        for name in ("start_lr", "end_lr", "base_lr"):
            if not getattr(c, name) > 0:
                raise InputError(f"remind: {name} must be positive, got {getattr(c, name)}")
        if c.end_lr > c.start_lr or c.lr_step_size < 1 or c.replay_samples < 1 or not 0 < c.crop_scale_min <= 1 \
                or c.mixup_alpha < 0 or c.momentum < 0 or c.weight_decay < 0:
            raise InputError("remind: needs 0 < end_lr <= start_lr, lr_step_size >= 1, replay_samples >= 1, "
                             "0 < crop_scale_min <= 1 and non-negative mixup_alpha, momentum, weight_decay")
        self.extractor, self.head = extractor_and_head(self, ctx)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=c.base_lr, momentum=c.momentum,
                                         weight_decay=c.weight_decay)
        self.rng = np.random.default_rng(int(ctx.seed))
        self.buffer = PQBuffer(tuple(self.head.in_features), parse_bytes(c.replay_budget), c.codebook_size,
                               c.channels_per_codebook, ctx.threads or 1)
        # task 1's features (as [positions, channels] rows, preallocated for the task) and labels by dataset index
        self.base: Optional[dict[int, tuple[int, int]]] = {}  # dataset index -> (row block, label)
        self.base_rows = np.empty((0, self.head.in_features[0]), dtype=np.float32)
        self.class_steps: dict[int, int] = {}
        self.class_total: dict[int, int] = {}

    @torch.no_grad()
    def extract(self, x: Tensor) -> Tensor:
        return torch.as_tensor(self.extractor(x)).to(self.device, torch.float32)

    def on_begin_task(self, task_id, classes, n_train) -> None:
        if self.base is not None and not self.base and n_train:  # base initialisation: room for its features
            c, h, w = self.buffer.shape
            self.base_rows = np.empty((int(n_train) * h * w, c), dtype=np.float32)
        per_class = (n_train / max(1, len(classes))) if n_train else 1300.0  # 1300: theirs (ImageNet)
        for col in self.classes.task_columns(task_id):
            self.class_total[col] = max(1, int(round(per_class * int(self.ctx.scenario.epochs))))

    def lr_for(self, col: int) -> float:
        c = self.config
        total = self.class_total.get(col, 1300)
        gamma = math.exp(c.lr_step_size * math.log(c.end_lr / c.start_lr) / total)
        return c.start_lr * gamma ** (self.class_steps.get(col, 0) // c.lr_step_size)

    def train_step(self, batch: Batch) -> Step:
        f = self.extract(batch.x)
        if self.base is not None:
            return self._base_step(batch, f)
        return self._stream(batch, f)

    def _base_step(self, batch: Batch, f: Tensor) -> Step:
        """Base initialisation (task 1): plain CE on the batch; the features kept for the PQ."""
        ids = batch.ids.tolist() if batch.ids is not None else [None] * len(f)
        c, h, w = self.buffer.shape
        for i, key in enumerate(ids):
            if key is None:
                key = -1 - len(self.base)  # direct observe() calls without indices: every sample is new
            if int(key) not in self.base:
                j = len(self.base)
                if (j + 1) * h * w > len(self.base_rows):  # beyond the announced size: grow
                    grow = np.empty((max(len(self.base_rows), h * w), c), dtype=np.float32)
                    self.base_rows = np.concatenate([self.base_rows, grow])
                self.base_rows[j * h * w: (j + 1) * h * w] = f[i].detach().cpu().permute(1, 2, 0).reshape(h * w, c)
                self.base[int(key)] = (j, int(batch.y[i]))
        self.head.train()
        loss = F.cross_entropy(self.head(f), batch.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return Step({"loss": float(loss.detach())}, trained={"head": len(f)}, forwarded={"frozen": len(f)})

    def on_end_task(self, x) -> Step | None:
        if self.base is None:
            return None
        keys = list(self.base)
        _, h, w = self.buffer.shape
        rows = self.base_rows[: len(keys) * h * w]
        labels = [self.base[k][1] for k in keys]  # blocks were filled in key order
        self.base, self.base_rows = None, None  # their fit_pq: train on the base features, store every one
        self.buffer.train(rows)
        codes = self.buffer.encode_rows(rows).reshape(len(keys), self.buffer.code_bytes)
        del rows
        for k, code, y in zip(keys, codes, labels):
            self.buffer.put(k, code, y, self.rng)
        return None

    def _stream(self, batch: Batch, f: Tensor) -> Step:
        """REMIND's ``fit_incremental_batch``: one update per new sample with its replay mini-batch."""
        c = self.config
        codes = self.buffer.encode(f)
        ids = batch.ids.tolist() if batch.ids is not None else [None] * len(f)
        self.head.train()
        total, replayed = 0.0, 0
        for i in range(len(f)):
            y = int(batch.y[i])
            k = (2 if c.mixup else 1) * c.replay_samples
            old_codes, old_y = self.buffer.draw(k, self.rng)
            data = self.buffer.decode(np.concatenate([codes[i: i + 1], old_codes])).to(self.device)
            if c.random_resized_crops:
                data = random_resized_crops(data, (c.crop_scale_min, 1.0), self.rng)
            ya = torch.as_tensor(np.concatenate([[y], old_y]), dtype=torch.long, device=self.device)
            if c.mixup:
                n = c.replay_samples
                lam = float(self.rng.beta(c.mixup_alpha, c.mixup_alpha)) if c.mixup_alpha > 0 else 1.0
                mixed = lam * data[1: 1 + n] + (1 - lam) * data[1 + n:]
                data = torch.cat([data[:1], mixed])
                yb = torch.cat([ya[:1], ya[1 + n:]])
                ya = ya[: 1 + n]
                out = self.head(data)
                loss = (lam * F.cross_entropy(out, ya, reduction="none")
                        + (1 - lam) * F.cross_entropy(out, yb, reduction="none")).mean()
            else:
                loss = F.cross_entropy(self.head(data), ya)
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr_for(y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.class_steps[y] = self.class_steps.get(y, 0) + 1
            key = ids[i] if ids[i] is not None else -1 - (1 << 40) - self.steps * len(f) - i
            self.buffer.put(int(key), codes[i], y, self.rng)
            total += float(loss.detach())
            replayed += len(data)
        return Step({"loss": total / max(1, len(f))}, trained={"head": replayed}, forwarded={"frozen": len(f)})

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        f = self.extract(x)
        if self.buffer.trained:
            f = self.buffer.reconstruct(f).to(self.device)
        self.head.eval()
        try:
            return self.head(f)
        finally:
            self.head.train()

    def accounting(self) -> dict:
        from lightcl.bench.accounting import bytes_as_elements, count_activations

        n = 1 + self.config.replay_samples
        hp = n_params(self.head.parameters())
        return {"weights": self.frozen_params + hp, "trainable": hp,
                "optimizer_slots": 1 if self.config.momentum > 0 else 0, "extra_state": 0,
                "activations": count_activations(self.head, torch.zeros(n, *self.head.in_features)),
                "buffer": bytes_as_elements(self.buffer.nbytes()), "samples_per_step": n}

    def describe(self) -> dict:
        b = self.buffer
        return {**super().describe(), "extractor": self.extractor.info(),
                "replay": {"codec": "faiss-pq", "budget_bytes": b.budget,
                           "bytes": b.nbytes(), "samples": len(b), "capacity": b.capacity,
                           "bytes_per_sample": b.per_sample, "codebooks": b.m, "table_bytes": b.table_bytes}}
