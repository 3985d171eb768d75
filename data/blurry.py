"""Blurry task streams (Bang et al., CVPR 2021, "Rainbow Memory": Blurry-M; Koh et al., ICLR 2022, i-Blurry):
each task keeps most of its own classes' samples and a fraction ``blurry`` of them move to other tasks,
so classes appear and reappear across the stream and no boundary separates them. Test sets are unchanged
(each task is evaluated on its own classes), so results compare with the disjoint stream's."""
from __future__ import annotations

import numpy as np

from lightcl.engine.errors import InputError

from .tasks import Task


def blur_tasks(tasks: list[Task], fraction: float, seed: int = 0) -> list[Task]:
    """New tasks whose training indices: each task gives a seeded ``fraction`` of its own samples to the
    other tasks (each moved sample to one other task, uniformly)."""
    if not 0.0 <= float(fraction) < 1.0:
        raise InputError(f"blurry must be a fraction in [0, 1), got {fraction!r}")
    if fraction == 0 or len(tasks) < 2:
        return tasks
    rng = np.random.default_rng(seed)
    keep: list[list[np.ndarray]] = [[] for _ in tasks]
    for i, t in enumerate(tasks):
        idx = rng.permutation(np.asarray(t.train_idx))
        n_move = int(round(len(idx) * float(fraction)))
        keep[i].append(idx[n_move:])
        others = [j for j in range(len(tasks)) if j != i]
        dest = rng.choice(others, size=n_move)
        for j in others:
            keep[j].append(idx[:n_move][dest == j])
    return [Task(t.task_id, list(t.classes), np.sort(np.concatenate(keep[i])), t.test_idx) for i, t in enumerate(tasks)]
