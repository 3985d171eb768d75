"""``lightcl predict STATE``: labels for a dataset split or image files, with accuracy when labels are known.

The device path: with ``--images`` it imports only ``lightcl.engine`` (and Pillow), and runs on Python 3.8
with torch >= 1.13 (docs/device-floor.md). ``--dataset`` loads a named dataset through the host-side
``lightcl.bench`` (the ``bench`` extra).
"""
from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = ("Predict with a learned state. Either --dataset NAME --split test (labels known: accuracy on the "
               "classes the state has learned) or --images FILE_OR_DIR (PNG/JPEG files).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("state", metavar="STATE", help="learner state directory (from `lightcl learn`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset name (see docs/datasets.md)")
    src.add_argument("--images", help="an image file or a folder of images")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--data-path", default=None)
    p.add_argument("--mode", default="cil", choices=["cil", "til"],
                   help="cil: any learned class; til: inside a task (--task-id, or each sample's own task)")
    p.add_argument("--task-id", type=int, default=None)
    p.add_argument("--export", default=None, help="export directory (default: the one the state was learned on)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", default=None, help="write labels (and accuracy) here")


def _read_images(path: Path, size: int):
    import numpy as np

    from lightcl.engine.errors import InputError, MissingDependencyError

    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError("--images needs Pillow: pip install pillow (or lightcl[device])") from None

    exts = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp"}
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.suffix.lower() in exts)
    if not files:
        raise InputError(f"no images found at {path}")
    arrs = []
    for f in files:
        try:
            with Image.open(f) as im:
                arrs.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8))
        except Exception as e:
            raise InputError(f"cannot read image {f}: {e}") from None
    return files, np.stack(arrs)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from lightcl.engine.errors import InputError
    from lightcl.engine.export_dir import load_export_meta
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.fileio import write_json_atomic
    from lightcl.engine.learner import LightCL
    from lightcl.engine.preprocess import ImagePreprocess, to_tensor_uint8
    from lightcl.engine.state import read_state_doc

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    doc = read_state_doc(args.state)
    export_dir = args.export or doc.get("extra", {}).get("export_dir")
    if not export_dir:
        raise InputError("the state does not say which export it was learned on: pass --export DIR")
    meta = load_export_meta(export_dir)
    learner = LightCL.load(args.state, load_extractor(export_dir, backend=args.backend))
    pre = ImagePreprocess.from_meta(meta)
    size = pre.size
    labels = None
    if args.images:
        files, arr = _read_images(Path(args.images), size)
        x = to_tensor_uint8(arr)
        names = [str(f) for f in files]
    else:
        from lightcl.bench.data import load_dataset

        ds = load_dataset(args.dataset, args.split, args.data_path)
        known = np.isin(ds.y, list(learner.class_index))
        if not known.any():
            raise InputError(f"none of {args.dataset}'s labels are classes this state has learned")
        ds = ds.subset(np.flatnonzero(known))
        x = to_tensor_uint8(ds.x)
        labels = torch.from_numpy(ds.y)
        names = [f"{args.dataset}/{args.split}/{i}" for i in range(len(ds))]
    class_task = {c: t for t, cs in learner.tasks.items() for c in cs}
    preds = []
    for i in range(0, len(x), args.batch_size):
        xb = pre(x[i:i + args.batch_size])
        if args.mode == "til" and args.task_id is None:
            if labels is None:
                raise InputError("--mode til on images needs --task-id")
            yb = labels[i:i + args.batch_size]
            out = torch.empty_like(yb)
            for t in sorted({class_task[int(c)] for c in yb}):
                sel = torch.tensor([class_task[int(c)] == t for c in yb])
                out[sel] = learner.predict(xb[sel], mode="til", task_id=t)
            preds.append(out)
        else:
            preds.append(learner.predict(xb, mode=args.mode, task_id=args.task_id))
    pred = torch.cat(preds)
    result = {"mode": args.mode, "n": len(pred), "predictions": [{"input": n, "label": int(p)} for n, p in zip(names, pred)]}
    if labels is not None:
        result["accuracy"] = float((pred == labels).float().mean())
        print(f"{len(pred)} samples of learned classes, {args.mode.upper()} accuracy {100 * result['accuracy']:.2f}%")
    else:
        for n, p in zip(names[:20], pred[:20]):
            print(f"{n}\t{int(p)}")
        if len(pred) > 20:
            print(f"... {len(pred) - 20} more (use --json)")
    if args.json:
        write_json_atomic(args.json, result)
    return 0
