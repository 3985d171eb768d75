"""The engine inside an application loop, as on a robot.

Frames arrive one at a time. The robot predicts on each frame with what it knows; now and then an
operator shows it a NEW class with a handful of labelled frames, and it learns that class on the
spot (a few update steps) without forgetting the old ones; the state is saved atomically after
every lesson, so a power cut loses at most the lesson in progress.

Run (after `scripts/demo` or `lightcl export ...` made an export):

    python examples/robot_loop.py --export ~/.cache/lightcl/exports/<name> --state runs/robot

Frames here come from the test split of a real dataset (mnist-5k by default, loaded through the
host-side ``lightcl.bench``) standing in for a camera; on a device without the bench extra, pass
``--frames-file FILE.npz`` instead (uint8 arrays ``train_x``/``test_x`` ``[N, H, W, C]`` and integer
``train_y``/``test_y``). The loop itself needs only ``lightcl.engine``: it runs on Python 3.8 with
torch >= 1.13 (docs/device-floor.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import torch

from lightcl.engine.errors import InputError, LightCLError
from lightcl.engine.export_dir import load_export_meta, load_head
from lightcl.engine.extractors import load_extractor
from lightcl.engine.learner import LightCL
from lightcl.engine.preprocess import ImagePreprocess, resize_uint8, to_tensor_uint8


class Frames:
    """Labelled uint8 frames: ``x`` ``[N, C, H, W]`` tensor, ``y`` ``[N]`` int64 tensor."""

    def __init__(self, x: np.ndarray, y: np.ndarray, size: int):
        if np.asarray(x).dtype != np.uint8 or np.asarray(x).ndim != 4 or len(x) != len(y):
            raise InputError(f"frames must be uint8 [N,H,W,C] with one label each, got {np.asarray(x).dtype} "
                             f"{np.asarray(x).shape} and {len(y)} labels")
        self.x = resize_uint8(to_tensor_uint8(np.asarray(x)), size)  # the camera delivers the model's size
        self.y = torch.as_tensor(np.asarray(y, dtype=np.int64))


def load_frames(args: argparse.Namespace, size: int):
    """(train, test) frames: from an .npz file (device), or a named dataset through lightcl.bench (host)."""
    if args.frames_file:
        try:
            with np.load(args.frames_file) as z:
                parts = [z[k] for k in ("train_x", "train_y", "test_x", "test_y")]
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"--frames-file {args.frames_file}: not an .npz with train_x/train_y/test_x/test_y "
                             f"({e})") from None
        return Frames(parts[0], parts[1], size), Frames(parts[2], parts[3], size)
    from lightcl.data.datasets import load_dataset  # host side: the data layer (+ the bench extra)

    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    return Frames(train.x, train.y, size), Frames(test.x, test.y, size)


def camera(data: Frames, classes: List[int], rng: np.random.Generator):
    """An endless stream of (frame, true label) drawn from the given classes."""
    idx = np.flatnonzero(np.isin(data.y.numpy(), classes))
    while True:
        i = int(rng.choice(idx))
        yield data.x[i: i + 1], int(data.y[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", required=True, help="export directory")
    ap.add_argument("--state", default="runs/robot", help="state directory (resumed if present)")
    ap.add_argument("--dataset", default="mnist-5k", help="frames from this dataset (needs lightcl[bench])")
    ap.add_argument("--frames-file", default=None,
                    help="frames from an .npz (uint8 train_x/test_x [N,H,W,C], int train_y/test_y) instead")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--shots", type=int, default=32, help="labelled frames shown per new class")
    ap.add_argument("--steps", type=int, default=40, help="update steps per lesson")
    ap.add_argument("--frames", type=int, default=100, help="frames predicted between lessons")
    args = ap.parse_args()

    meta = load_export_meta(args.export)
    pre = ImagePreprocess.from_meta(meta)
    extractor = load_extractor(args.export, backend=args.backend)
    state = Path(args.state)
    if (state / "state.json").exists():
        robot = LightCL.load(state, extractor)
        print(f"resumed: knows classes {sorted(robot.class_index)}")
    else:
        # expandable classifier: the robot does not know in advance which classes it will be shown
        robot = LightCL(extractor, load_head(args.export), num_classes=None)
    train, test = load_frames(args, pre.size)
    rng = np.random.default_rng(0)
    lessons = [[0, 1], [2, 3], [4, 5]]
    for lesson in lessons:
        if all(c in robot.class_index for c in lesson):
            continue
        # --- an operator shows a new class pair with a few labelled frames
        shown = np.flatnonzero(np.isin(train.y.numpy(), lesson))
        shown = rng.choice(shown, size=args.shots, replace=False)
        x, y = pre(train.x[torch.as_tensor(shown)]), train.y[torch.as_tensor(shown)]
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
    try:
        main()
    except LightCLError as e:  # bad input (a missing export, an unreadable --frames file): one line
        print(f"robot_loop: error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 1))
