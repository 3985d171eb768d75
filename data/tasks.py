"""Class-incremental task streams: seeded class order, classes per task, batches drawn on demand; and
:func:`real_images`, a seeded batch of a dataset's real images normalised like training (the export's
parity check and int8/TensorRT calibration)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from lightcl.engine.errors import InputError, StateError

from .datasets import ImageDataset, load_dataset
from .transforms import Preprocess, channel_stats, resize_uint8, to_tensor_uint8


@dataclass
class Task:
    task_id: int
    classes: list[int]
    train_idx: np.ndarray
    test_idx: np.ndarray


def class_order(num_classes: int, seed: int | None = None, order: Sequence[int] | None = None) -> list[int]:
    """The class order: explicit, else natural (seed None), else a seeded permutation."""
    if order is not None:
        order = [int(c) for c in order]
        if sorted(order) != sorted(set(order)) or any(c < 0 or c >= num_classes for c in order):
            raise InputError(f"class order must be distinct classes in [0, {num_classes}), got {order}")
        return order
    if seed is None:
        return list(range(num_classes))
    return [int(c) for c in np.random.default_rng(seed).permutation(num_classes)]


def split_tasks(y_train: np.ndarray, y_test: np.ndarray, n_tasks: int, classes_per_task: int,
                order: Sequence[int]) -> list[Task]:
    """Cut ``order`` into ``n_tasks`` consecutive groups of ``classes_per_task`` classes."""
    if n_tasks < 1 or classes_per_task < 1:
        raise InputError("n_tasks and classes_per_task must be >= 1")
    if n_tasks * classes_per_task > len(order):
        raise InputError(f"{n_tasks} tasks x {classes_per_task} classes need {n_tasks * classes_per_task} "
                         f"classes, the order has {len(order)}")
    if len(set(int(c) for c in order)) != len(order):
        raise InputError(f"class order has repeated classes: {list(order)}")
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    tasks = []
    for t in range(n_tasks):
        cls = [int(c) for c in order[t * classes_per_task:(t + 1) * classes_per_task]]
        tasks.append(Task(t, cls, np.flatnonzero(np.isin(y_train, cls)), np.flatnonzero(np.isin(y_test, cls))))
    return tasks


class TensorData:
    """A dataset split as a resized uint8 tensor + labels, with a preprocessing pipeline."""

    def __init__(self, ds: ImageDataset, size: int = 32) -> None:
        self.name, self.classes = ds.name, ds.classes
        self.x = resize_uint8(to_tensor_uint8(ds.x), size)
        self.y = torch.from_numpy(ds.y.astype(np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def stats(self) -> tuple[list[float], list[float]]:
        mean, std = channel_stats(self.x)
        if len(mean) == 1:  # grey images are replicated to 3 channels
            mean, std = mean * 3, std * 3
        return mean, std

    def batches(self, idx: np.ndarray, batch_size: int, pre: Preprocess, train: bool = False,
                shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False, with_index: bool = False) -> Iterator[tuple[Tensor, ...]]:
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        if shuffle:
            idx_t = idx_t[torch.randperm(len(idx_t), generator=generator)]
        for i in range(0, len(idx_t), batch_size):
            b = idx_t[i:i + batch_size]
            if drop_last and len(b) < batch_size:
                break
            x = pre(self.x[b], train=train, generator=generator)
            yield (x, self.y[b], b) if with_index else (x, self.y[b])  # b: dataset indices (SparCL's data removal)


def real_images(dataset: str, split: str, n: int, normalization: dict, data_path: str | None = None,
                seed: int = 0, offset: int = 0, size: int = 32) -> tuple[Tensor, Tensor]:
    """``n`` real images of ``dataset`` (seeded selection), resized to ``size`` x ``size`` and normalised with
    ``normalization`` (``{"mean", "std"}`` in [0, 1] units, as a checkpoint records it): ``(x, y)``.

    ``offset`` skips the first images of the seeded order (fewer than ``offset`` images: from the start).
    """
    data = TensorData(load_dataset(dataset, split, data_path), size=size)
    if len(data) == 0:
        raise StateError(f"dataset {dataset!r} split {split!r} is empty")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    idx = order[offset: offset + n] if offset < len(data) else order[:n]
    pre = Preprocess(list(normalization["mean"]), list(normalization["std"]))
    return pre(data.x[idx]), data.y[idx]
