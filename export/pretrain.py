"""Pretrain a whole backbone on a dataset, reproducibly: no pretrained weights can be had offline."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lightcl.data.datasets import hflip_ok, load_dataset, seeded_split
from lightcl.data.tasks import TensorData
from lightcl.data.transforms import Preprocess

from .checkpoint import save_checkpoint
from .zoo import create_backbone


def set_seed(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def evaluate(model, data: TensorData, pre: Preprocess, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    for x, y in data.batches(np.arange(len(data)), batch_size, pre):
        correct += int((model(x).argmax(1) == y).sum())
    return correct / max(1, len(data))


def pretrain(dataset: str, out: str | Path, arch: str = "resnet18", width: int = 64, epochs: int = 10,
             batch_size: int = 64, lr: float = 0.05, seed: int = 0, data_path: str | None = None,
             threads: int | None = None, subset: int | None = None, progress: bool = True) -> dict:
    """Train ``arch`` on ``dataset`` (SGD+momentum, cosine schedule, crop augmentation) and save it."""
    from tqdm import tqdm

    if threads:
        torch.set_num_threads(threads)
    gen = set_seed(seed)
    train_ds = load_dataset(dataset, "train", data_path)
    if subset is not None and subset < len(train_ds):
        # a seeded, class-balanced subset: the demo's time budget on a 2-core CPU
        keep = seeded_split(len(train_ds), train_ds.y, "test", test_fraction=subset / len(train_ds), seed=seed)
        train_ds = train_ds.subset(keep)
    train = TensorData(train_ds)
    test = TensorData(load_dataset(dataset, "test", data_path))
    mean, std = train.stats()
    model = create_backbone(arch, num_classes=len(train.classes), width=width)
    pre = Preprocess(mean, std, size=model.input_size[-1], crop_padding=4, hflip=hflip_ok(dataset))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    warm = min(steps_per_epoch, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    epoch_times = []
    for ep in range(epochs):
        model.train()
        t0 = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"pretrain {dataset} epoch {ep + 1}/{epochs}", unit="step",
                   disable=not progress, leave=False)
        for x, y in train.batches(np.arange(len(train)), batch_size, pre, train=True, shuffle=True, generator=gen):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        epoch_times.append(time.perf_counter() - t0)
    acc = evaluate(model, test, Preprocess(mean, std))
    meta = {
        "dataset": dataset, "epochs": epochs, "seed": seed, "subset": subset, "batch_size": batch_size, "lr": lr,
        "classes": train.classes, "input_size": list(model.input_size),
        "normalization": {"mean": mean, "std": std, "scale": "0-1"},
        "test_accuracy": acc, "train_size": len(train), "test_size": len(test),
        "epoch_seconds": [round(t, 3) for t in epoch_times], "torch": torch.__version__,
    }
    st, js = save_checkpoint(model, out, meta)
    meta.update(weights=str(st), meta_path=str(js))
    return meta
