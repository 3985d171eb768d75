"""``lightcl predict STATE``: labels for a dataset split or image files, with accuracy when labels are known.

The device path: with ``--images`` it imports only ``lightcl.engine`` (and Pillow), and runs on Python 3.8
with torch >= 1.13 (docs/device-floor.md). ``--dataset`` loads a named dataset through the host-side
``lightcl.bench`` (the ``bench`` extra).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lightcl.commands import _args

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
    _args.add_backend(p, help="extractor backend; a state learned with --frozen-bn train reopens on torch with its "
                              "drifted frozen BN statistics")
    _args.add_device(p)
    _args.add_threads(p, help="torch and extractor runtime threads")
    _args.add_batch(p, default=256, help="images per forward pass")
    _args.add_json(p, help="write labels (and accuracy) here")


MAX_IMAGE_BYTES = 256 << 20


def printable(name: str) -> str:
    """A file name on one line: a newline (or any control character) in an image name split its output line."""
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def _read_images(path: Path, size: int):
    import numpy as np

    from lightcl.engine.errors import InputError
    from lightcl.engine.optional import require

    Image = require("PIL.Image", needed_for="--images", install="pip install pillow (or lightcl[device])")

    exts = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp"}
    if not path.exists() and not path.is_symlink():
        raise InputError(f"--images {printable(str(path))} does not exist")
    files = [path] if not path.is_dir() else sorted(f for f in path.rglob("*") if f.suffix.lower() in exts)
    if not files:
        raise InputError(f"no images found at {path}")
    arrs = []
    from lightcl.engine.fileio import open_regular

    for f in files:
        # open_regular first: a FIFO named x.png blocked forever, a directory named x.png gave a traceback
        with open_regular(f, "image", max_bytes=MAX_IMAGE_BYTES, error=InputError) as fh:
            try:
                with Image.open(fh) as im:
                    arrs.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8))
            except Exception as e:  # PIL's own errors, decompression bombs included
                raise InputError(f"cannot read image {printable(str(f))}: {' '.join(str(e).split())[:200]}") from None
    return files, np.stack(arrs)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from lightcl.engine.errors import InputError
    from lightcl.engine.export_dir import load_export_meta
    from lightcl.engine.extractors import load_extractor, options_for
    from lightcl.engine.fileio import write_json_atomic
    from lightcl.engine.learner import LightCL
    from lightcl.engine.preprocess import ImagePreprocess, to_tensor_uint8
    from lightcl.engine.state import read_state_doc

    from lightcl.commands._safety import check_batch, check_output, check_threads, export_bytes_per_sample

    check_threads(args.threads)
    check_output(args.json, dirs=[args.state, args.export])
    doc = read_state_doc(args.state)
    extra = doc.get("extra") if isinstance(doc.get("extra"), dict) else {}
    export_dir = args.export or extra.get("export_dir")
    if not export_dir or not isinstance(export_dir, str):
        raise InputError("the state does not say which export it was learned on: pass --export DIR")
    check_output(args.json, dirs=[export_dir])
    check_batch(args.batch_size, "--batch-size", export_bytes_per_sample(export_dir, train=False))
    meta = load_export_meta(export_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    ext_opts = options_for(args.backend, threads=args.threads)
    if doc.get("frozen_bn") == "train":  # the frozen part's drifted BN statistics are in the state
        if not options_for(args.backend, frozen_bn="train"):  # this backend has no frozen_bn option
            raise InputError(f"{args.state} was learned with --frozen-bn train: its frozen BN statistics drifted and "
                             f"only the torch backend can use them (--backend torch or auto, not {args.backend})")
        ext_opts["frozen_bn"] = "train"
    learner = LightCL.load(args.state, load_extractor(export_dir, backend=args.backend, device=args.device,
                                                      **ext_opts))
    pre = ImagePreprocess.from_meta(meta)
    size = pre.size
    labels = None
    if args.images:
        files, arr = _read_images(Path(args.images), size)
        x = to_tensor_uint8(arr)
        names = [printable(str(f)) for f in files]
    else:
        from lightcl.data.datasets import load_dataset

        ds = load_dataset(args.dataset, args.split, args.data_path)
        # a state learned with class names (folder lessons) knows the dataset's classes by name, else by number
        by_name = learner.classes.kind == "str"
        learned = set(learner.class_names())
        known = np.array([(ds.classes[c] if by_name else c) in learned for c in ds.y.tolist()], dtype=bool)
        if not known.any():
            raise InputError(f"none of {args.dataset}'s labels are classes this state has learned")
        ds = ds.subset(np.flatnonzero(known))
        x = to_tensor_uint8(ds.x)
        labels = learner.classes.ids([ds.classes[c] for c in ds.y.tolist()]) if by_name else torch.from_numpy(ds.y)
        names = [f"{args.dataset}/{args.split}/{i}" for i in range(len(ds))]
    class_task = learner.classes.task_of()  # a class that came back in a later lesson: its latest task
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
    # each prediction: the class name ("label": a str, or the int class) and its logit column ("index")
    label_of = [learner.classes.name(int(p)) for p in pred]
    result = {"mode": args.mode, "n": len(pred), "classes": learner.class_names(),
              "predictions": [{"input": n, "label": lab, "index": learner.class_index[int(p)]}
                              for n, lab, p in zip(names, label_of, pred)]}
    if labels is not None:
        result["accuracy"] = float((pred == labels).float().mean())
        print(f"{len(pred)} samples of learned classes, {args.mode.upper()} accuracy {100 * result['accuracy']:.2f}%")
    else:
        for n, lab in zip(names[:20], label_of[:20]):
            print(f"{n}\t{printable(str(lab))}")
        if len(pred) > 20:
            print(f"... {len(pred) - 20} more (use --json)")
    if args.json:
        write_json_atomic(args.json, result)
    return 0
