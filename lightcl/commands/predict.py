"""``lightcl predict STATE``: labels for a dataset split or image files, with accuracy when labels are known.

The device path: with ``--images`` it imports only ``lightcl.engine`` (and Pillow), and runs on Python 3.8
with torch >= 1.13 (docs/device-floor.md). ``--dataset`` loads a named dataset through the host-side
``lightcl.bench`` (the ``bench`` extra).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightcl.commands import _args

DESCRIPTION = ("Predict with a learned state. Either --dataset NAME --split test (labels known: accuracy on the "
               "classes the state has learned) or --images FILE_OR_DIR (PNG/JPEG/BMP/PGM/... files, brought to the "
               "export's input by its resize rule; a folder of class subfolders named like learned classes also "
               "gives accuracy). An image that cannot be read is skipped with one line; then the exit code is "
               "4 after the predictions of the others are printed (and written to --json).")
# exit code when some --images files were skipped (the others were predicted): docs/reliability.md
SKIPPED_EXIT = 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("state", metavar="STATE", help="learner state directory (from `lightcl learn`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset name (see docs/datasets.md)")
    src.add_argument("--images", help="an image file or a folder of images (sub-folders and symlinked folders "
                                      "followed); unreadable files are skipped (exit 4)")
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


def _read_images(path: Path, input_shape, resize):
    """The files of ``--images`` at the export's input: ``(files, uint8 [N, C, H, W], skipped lines)``."""
    from lightcl.engine.errors import InputError
    from lightcl.engine.images import image_files, load_images, printable

    if not path.exists() and not path.is_symlink():
        raise InputError(f"--images {printable(str(path))} does not exist")
    files = image_files(path)
    if not files:
        raise InputError(f"no images found at {printable(str(path))}")
    if path.is_dir():
        for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not image_files(sub):
                raise InputError(f"class folder {printable(str(sub))} has no images: add images or remove the "
                                 f"folder (an empty folder is not a class)")

    x, kept, skipped = load_images(files, input_shape, resize)
    if not kept:  # nothing to predict: one error line
        raise InputError(f"none of the {len(files)} images at {printable(str(path))} could be read "
                         f"({skipped[0] if skipped else 'no images'})")
    for msg in skipped:  # one line per image left out; the summary and exit code come at the end
        print(f"lightcl predict: skipped {msg}", file=sys.stderr)
    return [files[i] for i in kept], x, skipped


def _folder_labels(root: Path, files, known) -> list | None:
    """Labels (class ids) from ``ROOT/<class>/...`` when every image sits in a class folder named like a learned
    class, else None (no accuracy). ``known``: class name (as printed) -> class id."""
    by_name = known
    labels = []
    for f in files:
        try:
            parts = f.relative_to(root).parts
        except ValueError:
            return None
        if len(parts) < 2 or parts[0] not in by_name:
            return None
        labels.append(by_name[parts[0]])
    return labels


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from lightcl.engine.errors import InputError
    from lightcl.engine.export_dir import load_export_meta
    from lightcl.engine.extractors import load_extractor, options_for
    from lightcl.engine.images import printable
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
    labels = None
    skipped: list = []
    if args.images:
        files, x, skipped = _read_images(Path(args.images), pre.input_shape, pre.resize)
        names = [printable(str(f)) for f in files]
        folder = _folder_labels(Path(args.images), files,
                               {str(learner.classes.name(c)): c for c in learner.class_index}) if Path(args.images).is_dir() else None
        if folder is not None:
            labels = torch.as_tensor(folder)
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
    if args.images:
        result["skipped"] = skipped
    if labels is not None:
        result["accuracy"] = float((pred == labels).float().mean())
    if args.images:
        for n, lab in zip(names[:20], label_of[:20]):
            print(f"{n}\t{printable(str(lab))}")
        if len(pred) > 20:
            print(f"... {len(pred) - 20} more (use --json)")
    if labels is not None:
        what = "images in class folders" if args.images else "samples of learned classes"
        print(f"{len(pred)} {what}, {args.mode.upper()} accuracy {100 * result['accuracy']:.2f}%")
    if args.json:
        write_json_atomic(args.json, result)
    if skipped:
        print(f"lightcl predict: {len(skipped)} of {len(skipped) + len(pred)} images skipped (unreadable); "
              f"exit {SKIPPED_EXIT}", file=sys.stderr)
        return SKIPPED_EXIT
    return 0
