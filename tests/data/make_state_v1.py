"""Writes tests/data/state_v1/ (a ``lightcl-state/1`` directory) and state_v1.expected.json.

Made with the code of main at 13d5dc5 (the last commit writing format 1):
    git worktree add /tmp/v1 13d5dc5 && cd /tmp/v1 && <venv>/bin/python tests/data/make_state_v1.py OUT_DIR
The head is one 8-channel basic block on 8x4x4 features and the extractor a fixed pooling of the image, so
the fixture is a few KB and needs no export. The learner is saved in the middle of task 1 (buffer, targets,
masks of task 0, momentum, RNG); the expected file holds what main's code computed after that save: the
losses of two more steps, the final head weights' sha256, the masks and the last evaluation, on one thread.
tests/test_state_dict.py loads the directory with today's code, checks every saved tensor came back bit for
bit, and repeats the continuation (float sums may round differently on another CPU: losses are compared to
1e-6 there, exactly on the machine that made the fixture).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lightcl.engine.head import Head
from lightcl.engine.learner import LightCL

HEAD_CONFIG = {"blocks": [{"name": "layer4.0", "type": "basic", "cin": 8, "cout": 8, "stride": 1}],
               "in_features": [8, 4, 4], "num_classes": 4, "feat_dim": 8}
OPTIONS = {"num_classes": 4, "momentum": 0.9, "seed": 3}


class PoolExtractor:
    """Images [N, 3, 8, 8] -> features [N, 8, 4, 4] with no weights: 2x2 average pool, channels repeated."""

    frozen_id = "fixture-v1"
    meta = {"input_shape": [3, 8, 8]}

    def __call__(self, x):
        return F.avg_pool2d(x, 2).repeat(1, 3, 1, 1)[:, :8]


def batches(seed: int, classes, n: int, size: int = 6):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.tensor([classes[i % len(classes)] for i in range(size)])
        x = torch.randn(size, 3, 8, 8, generator=g) + 0.5 * (y % 2).view(-1, 1, 1, 1).float()
        out.append((x, y))
    return out


def head_sha(learner) -> str:
    h = hashlib.sha256()
    for k, v in sorted(learner.head.state_dict().items()):
        h.update(k.encode() + v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def continuation(learner) -> dict:
    """What happens after the save: two more steps of task 1, its end, an evaluation."""
    losses = [learner.observe(x, y) for x, y in batches(11, [2, 3], 2)]
    learner.end_task(batches(12, [2, 3], 1)[0][0])
    ev = learner.evaluate([(0, batches(13, [0, 1], 2)), (1, batches(14, [2, 3], 2))])
    return {"steps": [{k: v for k, v in s.items() if k != "step_ms"} for s in losses], "head_sha256": head_sha(learner),
            "evaluate": ev, "masks": {k: v.int().tolist() for k, v in sorted(learner.memory.masks.items())}}


def make(out: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    learner = LightCL(PoolExtractor(), Head(HEAD_CONFIG), **OPTIONS)
    learner.begin_task(0, [0, 1])
    for x, y in batches(1, [0, 1], 3):
        learner.observe(x, y)
    learner.end_task(batches(2, [0, 1], 1)[0][0])
    x, y = batches(3, [2, 3], 1)[0]
    learner.begin_task(1, [2, 3], x, y)
    for x, y in batches(4, [2, 3], 2):
        learner.observe(x, y)
    learner.extra["made_by"] = "tests/data/make_state_v1.py at main 13d5dc5"
    learner.save(out / "state_v1")
    expected = continuation(learner)
    (out / "state_v1.expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
