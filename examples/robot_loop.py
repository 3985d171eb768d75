"""The engine inside an application loop, as on a robot.

Frames arrive one at a time. The robot predicts on each frame with what it knows; now and then an
operator shows it a NEW class with a handful of labelled frames, and it learns that class on the
spot (a few update steps) without forgetting the old ones; the state is saved atomically after
every lesson, so a power cut loses at most the lesson in progress.

Run (after `scripts/demo` or `lightcl export ...` made an export):

    python examples/robot_loop.py --export ~/.cache/lightcl/exports/<name> --state runs/robot

Frames here come from the test split of a real dataset (mnist-5k by default) standing in for a camera.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lightcl.bench.data import load_dataset
from lightcl.bench.tasks import TensorData
from lightcl.bench.transforms import Preprocess
from lightcl.engine.errors import LightCLError
from lightcl.engine.export_dir import load_export_meta, load_head
from lightcl.engine.extractors import load_extractor
from lightcl.engine.learner import LightCL


def camera(data: TensorData, classes: list[int], rng: np.random.Generator):
    """An endless stream of (frame, true label) drawn from the given classes."""
    idx = np.flatnonzero(np.isin(data.y.numpy(), classes))
    while True:
        i = int(rng.choice(idx))
        yield data.x[i: i + 1], int(data.y[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", required=True, help="export directory")
    ap.add_argument("--state", default="runs/robot", help="state directory (resumed if present)")
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--shots", type=int, default=32, help="labelled frames shown per new class")
    ap.add_argument("--steps", type=int, default=40, help="update steps per lesson")
    ap.add_argument("--frames", type=int, default=100, help="frames predicted between lessons")
    args = ap.parse_args()

    meta = load_export_meta(args.export)
    norm = meta["normalization"]
    pre = Preprocess(norm["mean"], norm["std"])
    extractor = load_extractor(args.export, backend=args.backend)
    state = Path(args.state)
    if (state / "state.json").exists():
        robot = LightCL.load(state, extractor)
        print(f"resumed: knows classes {sorted(robot.class_index)}")
    else:
        # expandable classifier: the robot does not know in advance which classes it will be shown
        robot = LightCL(extractor, load_head(args.export), num_classes=None)
    train = TensorData(load_dataset(args.dataset, "train"))
    test = TensorData(load_dataset(args.dataset, "test"))
    rng = np.random.default_rng(0)
    lessons = [[0, 1], [2, 3], [4, 5]]
    for lesson in lessons:
        if all(c in robot.class_index for c in lesson):
            continue
        # --- an operator shows a new class pair with a few labelled frames
        shown = np.flatnonzero(np.isin(train.y.numpy(), lesson))
        shown = rng.choice(shown, size=args.shots, replace=False)
        x, y = pre(train.x[torch.as_tensor(shown)], train=False), train.y[torch.as_tensor(shown)]
        task_id = len(robot.finished_tasks)
        t0 = time.perf_counter()
        robot.begin_task(task_id, lesson)
        for _ in range(args.steps):
            robot.observe(x, y)
        robot.end_task()
        robot.save(state)
        print(f"learned classes {lesson} from {args.shots} frames in {time.perf_counter() - t0:.1f} s; state saved")
        # --- back to work: predict on incoming frames of every class known so far
        known = sorted(robot.class_index)
        stream = camera(test, known, rng)
        hits, lat = 0, []
        for _ in range(args.frames):
            frame, label = next(stream)
            t = time.perf_counter()
            try:
                pred = int(robot.predict(pre(frame))[0])
            except LightCLError as e:  # a garbage frame must not stop the robot
                print(f"frame rejected: {e}")
                continue
            lat.append((time.perf_counter() - t) * 1000)
            hits += pred == label
        print(f"  {args.frames} frames of classes {known}: accuracy {100 * hits / args.frames:.1f}%, "
              f"median latency {statistics.median(lat):.2f} ms/frame")


if __name__ == "__main__":
    main()
