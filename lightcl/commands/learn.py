"""``lightcl learn EXPORT --scenario NAME --state STATE`` or ``lightcl learn EXPORT --images DIR --lessons
cup,ball/cat,dog --state STATE``: continual learning with the engine, on the one stream loop of
:mod:`lightcl.data.stream` (nothing here imports the benchmark)."""
from __future__ import annotations

import argparse

from lightcl.commands import _args

DESCRIPTION = ("Learn a class-incremental stream with LightCL on an export directory: a built-in --scenario, or "
               "named lessons from your own class-per-subfolder image folder (--images DIR --lessons cup,ball/cat,dog). "
               "Progress per task, TIL and CIL accuracy matrices after each task, state saved after each task; an "
               "existing --state is continued only with --resume, never overwritten.")


def add_learner_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LightCL options (defaults = the authors' code)")
    g.add_argument("--lr", type=float, default=None, help="SGD learning rate (0.01)")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum (0)")
    g.add_argument("--beta", type=float, default=None, help="feature-pattern weight (2e-4); 0 disables the memory")
    g.add_argument("--buffer-size", type=int, default=None, help="buffered samples N (15)")
    g.add_argument("--ratio", type=float, default=None, help="vital-channel ratio (0.15)")
    g.add_argument("--buffer-policy", choices=["new-task-first-batch", "reservoir"], default=None)
    g.add_argument("--loss-slice", choices=["task", "all"], default=None,
                   help="cross-entropy over the task's logits (task, authors) or all seen classes (all)")
    g.add_argument("--expandable", action="store_true", help="grow the classifier as classes arrive (always so "
                   "with --images or --keep-backbone-classes)")
    g.add_argument("--keep-backbone-classes", action="store_true",
                   help="keep the backbone's own classifier and classes (reset_classifier=False; named by the export's "
                        "class_names): lessons add classes beside them")
    g.add_argument("--seed", type=int, default=None)
    r = p.add_argument_group("feature replay (off unless --replay-budget; docs/learner.md)")
    r.add_argument("--replay-budget", default=None, metavar="SIZE",
                   help="bytes for compressed frozen features of past samples, e.g. 2MiB, 512KiB; never exceeded")
    r.add_argument("--replay-codec", choices=["int8", "pq", "fp32"], default=None,
                   help="int8 (default), pq (REMIND's product quantisation: ~8x more samples per byte), fp32")
    r.add_argument("--replay-batch", type=int, default=None, help="stored samples replayed with each batch (32)")
    r.add_argument("--replay-weight", type=float, default=None, help="weight of the replayed samples' loss (1)")
    r.add_argument("--replay-steps", type=int, default=None,
                   help="more head updates per batch on replayed samples alone (0); compute, not memory")


REPLAY_KEYS = ["replay_codec", "replay_batch", "replay_weight", "replay_steps"]


def learner_options(args: argparse.Namespace) -> dict:
    from lightcl.engine.errors import InputError

    keys = ["lr", "momentum", "beta", "buffer_size", "ratio", "buffer_policy", "loss_slice", "seed",
            "replay_budget", *REPLAY_KEYS]
    opts = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    given = [k for k in REPLAY_KEYS if k in opts]
    if given and "replay_budget" not in opts:
        raise InputError(f"--{given[0].replace('_', '-')} sets up feature replay: give its --replay-budget too "
                         "(e.g. --replay-budget 2MiB)")
    if getattr(args, "expandable", False):
        opts["num_classes"] = None
    if getattr(args, "keep_backbone_classes", False):
        opts.update(reset_classifier=False, num_classes=None)
    return opts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", metavar="EXPORT", help="export directory (from `lightcl export`)")
    p.add_argument("--scenario", default=None,
                   help="a built-in scenario: smoke (the default without --images), offline, offline-hard, "
                        "paper-cifar10, paper-tinyimg, smoke-mobilenetv2")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="your own class-per-subfolder image folder (DIR/<class>/*.png; DIR/train and DIR/test if "
                        "present, else a seeded --test-fraction of each class is held out); needs --lessons")
    p.add_argument("--lessons", default=None, metavar="A,B/C,D",
                   help="with --images: the lessons in order, classes by folder name, e.g. cup,ball/cat,dog; a class "
                        "may come back in a later lesson. --resume accepts more lessons after the state's")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="with --images and no DIR/test: the seeded fraction of each class held out for testing (0.2)")
    p.add_argument("--frozen-bn", choices=["eval", "train"], default=None,
                   help="torch backend only: train = the authors' drifting frozen BN statistics while learning "
                        "(prediction always uses fixed statistics); --resume defaults to the state's mode")
    p.add_argument("--epochs", type=int, default=None, help="epochs per task (default: the scenario's; 1 with --images)")
    _args.output(p.add_argument("--state", required=True, help="state directory (written atomically after each task)"),
                 "dir")
    p.add_argument("--resume", action="store_true", help="continue after the last finished task in --state")
    p.add_argument("--max-tasks", type=int, default=None, help="stop after this many tasks (resume later)")
    p.add_argument("--data-path", default=None, help="explicit location of --scenario's dataset (needs --scenario)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _args.add_backend(p)
    _args.add_device(p)
    _args.add_threads(p, help="torch threads for the head")
    _args.add_batch(p, help="samples per update step (default: the scenario's; 32 with --images)")
    _args.add_json(p)
    add_learner_arguments(p)


def _say_what_resume_ignores(args: argparse.Namespace, opts: dict) -> None:
    """A resumed state keeps the options it was learned with (its memory, buffer and replay codes depend on them):
    say so when options were given, instead of letting ``--resume --replay-budget 4MiB`` look as if it took."""
    import sys
    from pathlib import Path

    given = [k for k in opts if k != "num_classes" and k != "reset_classifier"]
    if args.resume and given and (Path(args.state) / "state.json").exists():
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        print(f"note: resuming {args.state} keeps the options it was learned with; ignored: {flags}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import torch

    from lightcl.data.scenarios import get_scenario
    from lightcl.data.stream import learn_folder, learn_scenario, parse_lessons
    from lightcl.commands._safety import (check_batch, check_output, check_output_dir, check_threads,
                                          export_bytes_per_sample)
    from lightcl.engine.errors import InputError
    from lightcl.engine.extractors import options_for
    from lightcl.engine.fileio import write_json_atomic

    check_threads(args.threads)
    check_output_dir(args.state, "--state")
    check_output(args.json, dirs=[args.state, args.export_dir])
    if args.images is not None:
        if args.scenario is not None or args.data_path is not None:
            raise InputError("--images learns your own folder: it takes no --scenario or --data-path")
        if not args.lessons:
            raise InputError("--images needs --lessons, e.g. --lessons cup,ball/cat,dog (class folder names)")
    elif args.lessons is not None:
        raise InputError("--lessons names class folders of --images DIR: pass --images")
    elif args.data_path is not None and args.scenario is None:
        raise InputError("--data-path locates a scenario's dataset: name it with --scenario (for your own image "
                         "folder use --images DIR --lessons ...)")
    lessons = parse_lessons(args.lessons) if args.images is not None else None
    if lessons is not None and args.epochs is not None and args.epochs < 1:
        raise InputError(f"--epochs must be a positive integer, got {args.epochs}")
    if args.batch_size is not None:
        check_batch(args.batch_size, "--batch-size", export_bytes_per_sample(args.export_dir))
    if args.threads:
        torch.set_num_threads(args.threads)
    ext_opts = {"device": args.device}
    if args.frozen_bn:
        ext_opts["frozen_bn"] = args.frozen_bn
    elif args.resume:
        from pathlib import Path

        from lightcl.engine.state import read_state_doc

        if (Path(args.state) / "state.json").exists() and read_state_doc(args.state).get("frozen_bn") == "train":
            if not options_for(args.backend, frozen_bn="train"):  # the backend has no frozen_bn option
                raise InputError(f"{args.state} was learned with --frozen-bn train: it resumes on the torch backend "
                                 f"only (--backend torch or auto, not {args.backend})")
            ext_opts["frozen_bn"] = "train"
    opts = learner_options(args)
    _say_what_resume_ignores(args, opts)
    common = dict(backend=args.backend, resume=args.resume, learner_options=opts,
                  extractor_options=ext_opts, max_tasks=args.max_tasks, progress=not args.quiet)
    if lessons is not None:
        res = learn_folder(args.export_dir, args.images, lessons, args.state, epochs=args.epochs or 1,
                           batch_size=args.batch_size or 32, test_fraction=args.test_fraction, **common)
    else:
        scenario = get_scenario(args.scenario or "smoke", epochs=args.epochs, batch_size=args.batch_size)
        res = learn_scenario(args.export_dir, scenario, args.state, data_path=args.data_path, **common)
    print(f"final TIL {100 * res['final_til']:.2f}%  CIL {100 * res['final_cil']:.2f}%  "
          f"forgetting TIL {100 * res['forgetting_til']:.2f}  CIL {100 * res['forgetting_cil']:.2f}  "
          f"step {res['step_ms']:.1f} ms  peak RSS {res['peak_rss_mib']:.0f} MiB" if res["til"] else "no task learned")
    print(f"state: {args.state}")
    if args.json:
        write_json_atomic(args.json, res)
        print(f"results: {args.json}")
    return 0
