"""Named scenarios (docs/benchmarks.md): which backbone, what to pretrain on, what to learn continually, and how long.

The registry lives in the data layer because ``lightcl learn`` needs it (the continual-learning stream:
dataset, tasks, classes per task, epochs, batch) and must not import the benchmark. Which backbone and
split a scenario means is checked against the export layer's zoo by :mod:`lightcl.bench.scenarios`, whose
``Scenario`` (a subclass, with that check) and ``get_scenario`` the benchmark uses; here ``split`` stays as
written (None = the backbone's default).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

from lightcl.engine.errors import InputError


@dataclass(frozen=True)
class Scenario:
    name: str
    pretrain_dataset: str
    cl_dataset: str
    n_tasks: int
    classes_per_task: int
    width: int
    pretrain_epochs: int
    epochs: int  # per task
    batch_size: int = 32
    split: Optional[str] = None  # None: the backbone's default split (export/zoo.py registry entry)
    class_order_seed: int | None = None  # None = natural order 0..K-1 (as the authors' Split CIFAR-10)
    pretrain_subset: int | None = None  # pretrain on a seeded class-balanced subset (time budget)
    augment: bool = True  # random crop with padding 4 during continual training (Mammoth's seq-cifar10)
    description: str = ""
    arch: str = "resnet18"  # a backbone of the zoo (lightcl.export.zoo.list_backbones())
    # fraction of each task's training samples moved to other tasks (data/blurry.py); > 0: a task-free
    # stream that only methods with ``task_free = True`` run
    blurry: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


SCENARIOS: dict[str, Scenario] = {
    "smoke": Scenario(
        "smoke", "digits", "digits", 5, 2, width=16, pretrain_epochs=3, epochs=3,
        description="width-16 ResNet-18 pretrained on digits; Split digits 5x2. Seconds; CI."),
    "offline": Scenario(
        "offline", "fashion-mnist", "mnist-5k", 5, 2, width=32, pretrain_epochs=2, epochs=5, pretrain_subset=15000,
        description="backbone pretrained on Fashion-MNIST (train); Split MNIST-5k 5x2 (80/20, seeded)."),
    "offline-val": Scenario(
        "offline-val", "fashion-mnist", "fashion-mnist-val", 5, 2, width=32, pretrain_epochs=2, epochs=5,
        pretrain_subset=15000,
        description="offline's backbone on a validation stream for choosing hyperparameters (docs/tuning.md): "
                    "Split Fashion-MNIST 5x2 from training images its pretraining never saw."),
    "offline-val-novel": Scenario(
        "offline-val-novel", "fashion-mnist-base4", "fashion-mnist-val-novel", 3, 2, width=32, pretrain_epochs=2,
        epochs=5,
        description="the novel-class validation stream (docs/tuning.md): a backbone pretrained on Fashion-MNIST "
                    "classes 0-3 only learns classes 4-9 (Split 3x2) from training images no pretraining saw."),
    "offline-hard": Scenario(
        "offline-hard", "mnist-5k+digits", "fashion-mnist", 5, 2, width=32, pretrain_epochs=5, epochs=5,
        description="backbone pretrained on MNIST-5k + digits; Split Fashion-MNIST 5x2."),
    "paper-cifar10": Scenario(
        "paper-cifar10", "imagenet32", "cifar10", 5, 2, width=64, pretrain_epochs=30, epochs=50,
        description="the paper's Table 1: ImageNet32 pretraining, Split CIFAR-10 5x2, 50 epochs per task."),
    "paper-tinyimg": Scenario(
        "paper-tinyimg", "imagenet32", "tinyimagenet", 10, 20, width=64, pretrain_epochs=30, epochs=100,
        description="the paper's Tiny-ImageNet setting: 10 tasks x 20 classes, 100 epochs per task."),
    "smoke-mobilenetv2": Scenario(
        "smoke-mobilenetv2", "digits", "digits", 5, 2, width=16, pretrain_epochs=3, epochs=1, arch="mobilenetv2",
        description="width-16 MobileNetV2 (alpha 0.25) pretrained on digits; Split digits 5x2, 1 epoch per task. "
                    "The second backbone family end to end; seconds."),
    "offline-blurry": Scenario(
        "offline-blurry", "fashion-mnist", "mnist-5k", 5, 2, width=32, pretrain_epochs=2, epochs=5,
        pretrain_subset=15000, blurry=0.1,
        description="offline's data as a blurry stream: 10% of each task's samples spread over the other "
                    "tasks; no task boundary reaches the learner (task-free methods only)."),
    "smoke-blurry": Scenario(
        "smoke-blurry", "digits", "digits", 5, 2, width=16, pretrain_epochs=3, epochs=3, blurry=0.1,
        description="smoke's data as a blurry stream (10% of each task's samples elsewhere); task-free methods."),
}


def check_overrides(name: str, overrides: dict) -> dict:
    """``overrides`` without None values, the integer ones checked; ``arch`` alone also resets the split."""
    if name not in SCENARIOS:
        raise InputError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for key in ("epochs", "batch_size", "n_tasks", "classes_per_task", "width"):
        v = overrides.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"{key} must be a positive integer, got {v!r}")
    if "arch" in overrides and "split" not in overrides:
        overrides["split"] = None  # another backbone: its own default split
    return overrides


def get_scenario(name: str, **overrides) -> Scenario:
    """The named scenario with ``overrides`` (None values ignored); its split as written (None = the backbone's
    default; :func:`lightcl.bench.scenarios.get_scenario` resolves and checks it against the zoo)."""
    overrides = check_overrides(name, overrides)
    s = SCENARIOS[name]
    return replace(s, **overrides) if overrides else s
