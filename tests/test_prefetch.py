"""Overlapped extraction (engine/prefetch.py): identical to the sequential loop, bounded, errors surface."""
from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("onnxruntime")

from lightcl.engine.errors import InputError, ShapeError  # noqa: E402
from lightcl.engine.export_dir import load_export_meta, load_head  # noqa: E402
from lightcl.engine.extractors import load_extractor  # noqa: E402
from lightcl.engine.learner import LightCL  # noqa: E402
from lightcl.engine.prefetch import FeaturePrefetcher  # noqa: E402


@pytest.fixture(scope="module")
def stream(digits_export):
    from lightcl.data.tasks import real_images

    meta = load_export_meta(digits_export)
    x, y = real_images("digits", "train", 200, meta["normalization"], seed=7)
    a, b = y < 2, (y >= 2) & (y < 4)
    return (x[a][:16], y[a][:16]), [(x[b][i:i + 8], y[b][i:i + 8]) for i in range(0, 32, 8)]


def _learn(export_dir, stream, overlap: bool):
    (xa, ya), batches = stream
    ln = LightCL(load_extractor(export_dir, backend="ort", threads=1), load_head(export_dir), seed=0)
    ln.begin_task(0, [0, 1])
    ln.observe(xa, ya)
    ln.end_task()
    ln.begin_task(1, [2, 3])
    losses = []
    if overlap:
        for x, y, f in ln.prefetch(batches):
            losses.append(ln.observe(x, y, features=f)["loss"])
    else:
        for x, y in batches:
            losses.append(ln.observe(x, y)["loss"])
    ln.end_task()
    return ln, losses


def test_prefetch_equals_the_sequential_loop(digits_export, stream):
    seq, l1 = _learn(digits_export, stream, overlap=False)
    ovl, l2 = _learn(digits_export, stream, overlap=True)
    assert l1 == l2
    for (k, a), (_, b) in zip(seq.head.state_dict().items(), ovl.head.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.cat([b[0] for b in stream[1]])
    assert torch.equal(seq.logits(x), ovl.logits(x))
    assert seq.memory.state_dict().keys() == ovl.memory.state_dict().keys()


def test_prefetch_is_bounded_and_closes_on_break():
    seen = []

    def extract(x):
        seen.append(int(x[0]))
        return x * 2

    batches = [(torch.tensor([float(i)]), i) for i in range(10)]
    pf = FeaturePrefetcher(extract, batches, depth=1)
    it = iter(pf)
    x, y, f = next(it)
    assert y == 0 and torch.equal(f, x * 2)
    it.close()  # like a break out of the loop
    assert pf._thread is not None and not pf._thread.is_alive()
    assert len(seen) <= 3  # one yielded, one queued, at most one in flight: never the whole stream
    assert [t.name for t in threading.enumerate()].count("lightcl-prefetch") == 0


def test_prefetch_raises_the_extractors_error_at_its_batch():
    def extract(x):
        if int(x[0]) == 2:
            raise ShapeError("bad batch 2")
        return x

    got = []
    with pytest.raises(ShapeError, match="bad batch 2"):
        for x, y, f in FeaturePrefetcher(extract, [(torch.tensor([float(i)]), i) for i in range(5)]):
            got.append(y)
    assert got == [0, 1]
    with pytest.raises(InputError):
        FeaturePrefetcher(extract, [], depth=0)


def test_prefetch_and_given_features_refused_with_train_mode_bn(digits_export, stream):
    ln = LightCL(load_extractor(digits_export, backend="torch", frozen_bn="train"), load_head(digits_export))
    with pytest.raises(InputError, match="frozen_bn='train'"):
        ln.prefetch(stream[1])
    ln.begin_task(0, [2, 3])
    x, y = stream[1][0]
    with pytest.raises(InputError, match="frozen_bn='train'"):
        ln.observe(x, y, features=torch.zeros(len(x), *ln.head.in_features))


def test_given_features_of_the_wrong_shape_refused(digits_export, stream):
    ln = LightCL(load_extractor(digits_export, backend="ort"), load_head(digits_export))
    ln.begin_task(0, [2, 3])
    x, y = stream[1][0]
    with pytest.raises(ShapeError):
        ln.observe(x, y, features=torch.zeros(len(x) + 1, *ln.head.in_features))
