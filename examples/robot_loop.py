"""The engine inside an application loop, as on a robot.

Frames arrive one at a time. The robot predicts on each frame with what it knows; now and then an
operator shows it a NEW class with a handful of labelled frames, and it learns that class on the
spot (a few update steps) without forgetting the old ones; the state is saved atomically after
every lesson, so a power cut loses at most the lesson in progress.

Run (after `scripts/demo` or `lightcl export ...` made an export):

    python examples/robot_loop.py --export ~/.cache/lightcl/exports/<name> --state runs/robot

Frames here come from a real dataset standing in for a camera: a named one (mnist-5k by default, loaded
through the host-side ``lightcl.data``), your own image folder (``--data-path DIR``: one sub-folder per
class, any names; a seeded 80/20 split per class, or DIR/train and DIR/test), or, on a device without the
host extras, ``--frames-file FILE.npz`` (uint8 arrays ``train_x``/``test_x`` ``[N, H, W, C]`` and integer
``train_y``/``test_y``). The lessons are the data's own classes, in sorted order, ``--per-lesson`` at a
time; every frame goes through the export's own preprocessing (its input shape and resize rule). The
loop itself needs only ``lightcl.engine``: it runs on Python 3.8 with torch >= 1.13 (docs/device-floor.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from lightcl.engine.errors import InputError, LightCLError
from lightcl.engine.export_dir import load_export_meta, load_head
from lightcl.engine.extractors import load_extractor
from lightcl.engine.images import image_files, load_images, printable
from lightcl.engine.learner import LightCL
from lightcl.engine.preprocess import ImagePreprocess, to_tensor_uint8


class Frames:
    """Labelled uint8 frames at the export's input: ``x`` ``[N, C, H, W]`` tensor, ``y`` ``[N]`` int64 tensor."""

    def __init__(self, x, y, pre: ImagePreprocess, resized: bool = False):
        if isinstance(x, np.ndarray):
            if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y):
                raise InputError(f"frames must be uint8 [N,H,W,C] with one label each, got {x.dtype} {x.shape} "
                                 f"and {len(y)} labels")
            x = to_tensor_uint8(x)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"frames need one integer label each, got {y.dtype} {list(y.shape)} for {len(x)} frames")
        # the camera delivers what the export takes: its shape and resize rule (once: a crop is not idempotent)
        self.x = x if resized else pre.resize_images(x)
        self.y = torch.as_tensor(y.astype(np.int64))


def folder_frames(root: Path, pre: ImagePreprocess, test_fraction: float = 0.2
                  ) -> Tuple["Frames", "Frames", Dict[int, str]]:
    """``ROOT/<class>/<image>`` (or ``ROOT/train/...`` and ``ROOT/test/...``): frames and the class names.

    Classes are the sorted folder names, numbered 0..K-1; without train/test folders each class is split
    80/20 with a seeded shuffle. Unreadable images are skipped with one line each; an empty class folder
    is refused."""
    if not root.is_dir():
        raise InputError(f"--data-path {printable(str(root))} is not a folder (expected DIR/<class>/<image>)")
    splits = (root / "train").is_dir() and (root / "test").is_dir()

    def classes_in(d: Path) -> List[str]:
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))

    names = sorted(set(classes_in(root / "train")) | set(classes_in(root / "test"))) if splits else classes_in(root)
    if not names:
        raise InputError(f"--data-path {printable(str(root))} has no class folders (expected DIR/<class>/<image>)")
    parts = {"train": ([], []), "test": ([], [])}  # type: Dict[str, Tuple[List[Path], List[int]]]
    for label, name in enumerate(names):
        dirs = {s: root / s / name for s in ("train", "test")} if splits else {"all": root / name}
        for split, d in dirs.items():
            if not d.is_dir():  # train/test: a class may be missing from one split
                continue
            files = image_files(d)
            if not files:
                raise InputError(f"class folder {printable(str(d))} has no images: add images or remove it")
            if split == "all":  # a seeded 80/20 split of this class (seeded by its label)
                order = [files[i] for i in np.random.default_rng(label).permutation(len(files))]
                k = int(round(len(files) * test_fraction))
                for sp, fs in (("train", order[k:]), ("test", order[:k])):
                    parts[sp][0].extend(fs)
                    parts[sp][1].extend([label] * len(fs))
            else:
                parts[split][0].extend(files)
                parts[split][1].extend([label] * len(files))
    out = []
    for split in ("train", "test"):
        files, labels = parts[split]
        x, kept, _ = load_images(files, pre.input_shape, pre.resize,
                                 on_skip=lambda m: print(f"skipped {m}", file=sys.stderr))
        out.append(Frames(x, np.asarray(labels, np.int64)[kept], pre, resized=True))
    return out[0], out[1], dict(enumerate(names))


def load_frames(args: argparse.Namespace, pre: ImagePreprocess) -> Tuple["Frames", "Frames", Dict[int, str]]:
    """(train, test, class names): an image folder or an .npz file (device), or a named dataset (host)."""
    if args.data_path:
        return folder_frames(Path(args.data_path), pre)
    if args.frames_file:
        try:
            with np.load(args.frames_file) as z:
                parts = [z[k] for k in ("train_x", "train_y", "test_x", "test_y")]
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"--frames-file {args.frames_file}: not an .npz with train_x/train_y/test_x/test_y "
                             f"({e})") from None
        train, test = Frames(parts[0], parts[1], pre), Frames(parts[2], parts[3], pre)
        return train, test, {int(c): str(int(c)) for c in np.unique(parts[1])}
    from lightcl.data.datasets import load_dataset  # host side: the data layer (+ the bench extra)

    tr, te = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    return Frames(tr.x, tr.y, pre), Frames(te.x, te.y, pre), {i: str(c) for i, c in enumerate(tr.classes)}


def lessons_of(labels: torch.Tensor, per_lesson: int, max_lessons: Optional[int]) -> List[List[int]]:
    """The data's own classes, sorted, cut into lessons of ``per_lesson`` (the last may be shorter)."""
    classes = sorted(int(c) for c in torch.unique(labels))
    groups = [classes[i: i + per_lesson] for i in range(0, len(classes), per_lesson)]
    return groups if max_lessons is None else groups[:max_lessons]


def camera(data: Frames, classes: List[int], rng: np.random.Generator):
    """An endless stream of (frame, true label) drawn from the given classes."""
    idx = np.flatnonzero(np.isin(data.y.numpy(), classes))
    if not len(idx):
        raise InputError(f"no test frames of classes {classes}")
    while True:
        i = int(rng.choice(idx))
        yield data.x[i: i + 1], int(data.y[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", required=True, help="export directory")
    ap.add_argument("--state", default="runs/robot", help="state directory (resumed if present)")
    ap.add_argument("--dataset", default="mnist-5k", help="frames from this dataset (needs lightcl[bench])")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--frames-file", default=None,
                     help="frames from an .npz (uint8 train_x/test_x [N,H,W,C], int train_y/test_y) instead")
    src.add_argument("--data-path", default=None,
                     help="frames from an image folder instead: DIR/<class>/<image>, any class names (or "
                          "DIR/train/<class>/... and DIR/test/<class>/...)")
    ap.add_argument("--per-lesson", type=int, default=2, help="new classes shown per lesson")
    ap.add_argument("--max-lessons", type=int, default=3, help="at most this many lessons (0: every class)")
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
    if args.per_lesson < 1 or args.shots < 1 or args.steps < 0 or args.frames < 1 or args.max_lessons < 0:
        raise InputError("--per-lesson, --shots and --frames must be >= 1, --steps and --max-lessons >= 0")
    train, test, names = load_frames(args, pre)
    rng = np.random.default_rng(0)
    lessons = lessons_of(train.y, args.per_lesson, args.max_lessons or None)
    for lesson in lessons:
        if all(c in robot.class_index for c in lesson):
            continue
        # --- an operator shows new classes with a few labelled frames each
        shown = np.flatnonzero(np.isin(train.y.numpy(), lesson))
        shown = rng.choice(shown, size=min(args.shots, len(shown)), replace=False)
        x, y = pre(train.x[torch.as_tensor(shown)]), train.y[torch.as_tensor(shown)]
        task_id = len(robot.finished_tasks)
        t0 = time.perf_counter()
        robot.begin_task(task_id, lesson)
        for _ in range(args.steps):
            robot.observe(x, y)
        robot.end_task()
        robot.save(state)
        print(f"learned classes {lesson} ({', '.join(names.get(c, str(c)) for c in lesson)}) from {len(shown)} "
              f"frames in {time.perf_counter() - t0:.1f} s; state saved")
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
