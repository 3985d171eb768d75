"""Concurrency: ``predict``/``logits`` from other threads while ``observe`` trains, with real threads,
a real onnxruntime extractor and real digits images.

The training thread records a snapshot of the head after every call that changes it (begin_task may
grow the classifier, observe steps, end_task updates BN statistics). Afterwards every logits tensor
the predicting threads got is compared, bit for bit, with the logits of every snapshot on the same
images: each must equal one complete version, and each thread must see versions in order. A saving
thread checks the same for states written while training runs.
"""
from __future__ import annotations

import collections
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from lightcl.engine.export_dir import load_export_meta, load_head
from lightcl.engine.extractors import load_extractor
from lightcl.engine.head import Head
from lightcl.engine.learner import LightCL
from conftest import write_counts

COUNTS: collections.Counter = collections.Counter()
TRAIN_SECONDS = 3.0


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts("concurrency", COUNTS)
    if COUNTS:
        print("\nconcurrency:", dict(sorted(COUNTS.items())))


@pytest.fixture(scope="module")
def digits(digits_export):
    from lightcl.data.datasets import load_dataset
    from lightcl.data.tasks import TensorData
    from lightcl.data.transforms import Preprocess

    meta = load_export_meta(digits_export)
    pre = Preprocess(meta["normalization"]["mean"], meta["normalization"]["std"])
    train = TensorData(load_dataset("digits", "train"))
    test = TensorData(load_dataset("digits", "test"))
    return train, test, pre


def _batches(train, pre, classes, n=16, seed=0):
    idx = np.flatnonzero(np.isin(train.y.numpy(), classes))
    rng = np.random.default_rng(seed)
    while True:
        b = torch.as_tensor(rng.choice(idx, size=n, replace=False))
        yield pre(train.x[b]), train.y[b]


def _head_logits(config: dict, state: dict, feats: torch.Tensor) -> torch.Tensor:
    head = Head({**config, "num_classes": state["fc.weight"].shape[0]})
    head.load_state_dict(state)
    head.eval()
    with torch.no_grad():
        return head(feats)


class Versions:
    """Snapshots of the head (one per change) and their logits on the probe images."""

    def __init__(self, learner: LightCL):
        self.learner, self.states = learner, []
        self.take()

    def take(self) -> None:
        with self.learner._lock:
            self.states.append({k: v.detach().clone() for k, v in self.learner.head.state_dict().items()})

    def logits(self, feats: torch.Tensor) -> list[torch.Tensor]:
        return [_head_logits(self.learner.head.config, s, feats) for s in self.states]


def match_in_order(results: list[torch.Tensor], version_logits: list[torch.Tensor]) -> list[int]:
    """Index of the version each result equals exactly, never going back; AssertionError otherwise."""
    out, lo = [], 0
    for n, r in enumerate(results):
        hits = [k for k in range(lo, len(version_logits))
                if version_logits[k].shape == r.shape and torch.equal(version_logits[k], r)]
        if not hits:
            earlier = [k for k in range(lo) if version_logits[k].shape == r.shape and torch.equal(version_logits[k], r)]
            raise AssertionError(f"result {n} matches no complete head version"
                                 + (f" at or after {lo} (it matches earlier {earlier[:3]})" if earlier else ""))
        lo = hits[0]
        out.append(lo)
    return out


def test_predict_while_observe_trains_sees_whole_versions(digits_export, digits, tmp_path):
    train, test, pre = digits
    ext = load_extractor(digits_export, backend="ort", threads=1)
    lr = LightCL(ext, load_head(digits_export), num_classes=None, momentum=0.9, seed=0)
    probe = pre(test.x[:12])
    lr.begin_task(0, [0, 1])
    lr.observe(*next(_batches(train, pre, [0, 1])))
    versions = Versions(lr)
    stop = threading.Event()
    results: dict[str, list] = collections.defaultdict(list)
    saved: list[Path] = []
    errors: list[BaseException] = []

    def trainer():
        try:
            task, t_end = 0, time.monotonic() + TRAIN_SECONDS
            # at least TRAIN_SECONDS and at least two tasks (>= 10 versions) however loaded the machine is
            while time.monotonic() < t_end or task < 2:
                classes = [2 * task % 10, (2 * task + 1) % 10]
                batches = _batches(train, pre, classes, seed=task)
                if task > 0:
                    lr.begin_task(task, [100 + 2 * task, 101 + 2 * task])  # fresh ids: the classifier grows
                    versions.take()
                for _ in range(6):
                    x, y = next(batches)
                    lr.observe(x, torch.where(y == classes[0], 100 + 2 * task, 101 + 2 * task) if task else y)
                    versions.take()
                lr.end_task()
                versions.take()
                task += 1
            COUNTS["tasks trained under concurrent predict"] += task
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)
        finally:
            stop.set()

    def predictor(name: str, fn):
        try:
            while not stop.is_set():
                results[name].append(fn())
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def saver():
        try:
            k = 0
            while not stop.is_set():
                d = tmp_path / f"s{k}"
                lr.save(d)
                saved.append(d)
                k += 1
                time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def cpu_load():
        a = torch.randn(256, 256)
        while not stop.is_set():
            a = torch.tanh(a @ a)

    threads = [threading.Thread(target=trainer),
               threading.Thread(target=predictor, args=("logits-1", lambda: lr.logits(probe))),
               threading.Thread(target=predictor, args=("logits-2", lambda: lr.logits(probe))),
               threading.Thread(target=predictor, args=("predict", lambda: lr.predict(probe))),
               threading.Thread(target=saver), threading.Thread(target=cpu_load)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, ["".join(traceback.format_exception(type(e), e, e.__traceback__))[-1500:] for e in errors]
    feats = ext(probe)
    vlog = versions.logits(feats)
    for name in ("logits-1", "logits-2"):
        seen = match_in_order(results[name], vlog)
        COUNTS["concurrent logits checked"] += len(seen)
        COUNTS["distinct versions seen by predict threads"] = max(COUNTS["distinct versions seen by predict threads"],
                                                                len(set(seen)))
    assert len(versions.states) >= 10, len(versions.states)
    assert COUNTS["distinct versions seen by predict threads"] >= 3  # they really overlapped with training
    # labels from predict() are the argmax of one version over the classes seen at that version
    label_sets = set()
    for lab in results["predict"]:
        label_sets.add(tuple(lab.tolist()))
    COUNTS["concurrent predict calls"] += len(results["predict"])
    # every state saved while training is one complete version
    for d in saved:
        got = LightCL.load(d, ext).logits(probe)
        assert any(v.shape == got.shape and torch.equal(v, got) for v in vlog), f"saved state {d.name} is no version"
    COUNTS["states saved during training, each one version"] += len(saved)
    COUNTS["head versions recorded"] += len(versions.states)


def test_the_check_rejects_a_half_applied_step(digits_export, digits):
    """Control: a head mixing two consecutive versions (first block new, rest old) matches neither."""
    train, test, pre = digits
    ext = load_extractor(digits_export, backend="ort", threads=1)
    lr = LightCL(ext, load_head(digits_export), num_classes=4, lr=0.05)
    lr.begin_task(0, [0, 1])
    batches = _batches(train, pre, [0, 1])
    lr.observe(*next(batches))
    v = Versions(lr)
    lr.observe(*next(batches))
    v.take()
    old, new = v.states
    torn = {k: (new[k] if k.startswith("blocks.0.") else old[k]) for k in old}
    probe = pre(test.x[:12])
    feats = ext(probe)
    with pytest.raises(AssertionError, match="no complete head version"):
        match_in_order([_head_logits(lr.head.config, torn, feats)], v.logits(feats))
    assert match_in_order([_head_logits(lr.head.config, new, feats)], v.logits(feats)) == [1]
    COUNTS["torn versions constructed and rejected"] += 1
