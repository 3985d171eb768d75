"""Transforms without torchvision and class-incremental task streams."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcl.data.datasets import ImageDataset, load_dataset
from lightcl.data.tasks import TensorData, class_order, split_tasks
from lightcl.data.transforms import (Preprocess, channel_stats, grey_to_rgb, normalize, random_crop,
                                      random_hflip, resize_uint8, to_tensor_uint8)
from lightcl.engine.errors import InputError

FAST = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------- resize, channels, normalisation
@pytest.mark.parametrize("src", [8, 28, 64])
def test_resize_to_32(src):
    g = torch.Generator().manual_seed(src)
    x = torch.randint(0, 256, (3, 1, src, src), generator=g, dtype=torch.uint8)
    y = resize_uint8(x, 32)
    assert y.shape == (3, 1, 32, 32) and y.dtype == torch.uint8
    ref = F.interpolate(x.float(), size=(32, 32), mode="bilinear", align_corners=False, antialias=src > 32)
    assert torch.equal(y, ref.round().clamp(0, 255).to(torch.uint8))
    # a flat image stays flat, exactly, and the mean brightness is kept
    flat = torch.full((1, 3, src, src), 77, dtype=torch.uint8)
    assert (resize_uint8(flat, 32) == 77).all()
    assert abs(y.float().mean() - x.float().mean()) < 3


def test_resize_real_digits_and_identity():
    d = load_dataset("digits", "test")
    x = to_tensor_uint8(d.x)
    assert x.shape == (len(d), 1, 8, 8)
    y = resize_uint8(x, 32, chunk=100)  # several chunks
    assert y.shape == (len(d), 1, 32, 32)
    # each 8x8 pixel becomes a 4x4 block whose centre keeps (nearly) the pixel's value
    assert (y[:, :, 1::4, 1::4].int() - x.int()).abs().float().mean() < 25
    z = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert resize_uint8(z, 32) is z
    with pytest.raises(ValueError):
        resize_uint8(z.float(), 16)


def test_grey_to_rgb_and_to_tensor():
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    t = to_tensor_uint8(x)
    assert t.shape == (2, 1, 4, 4) and torch.equal(t[1, 0], torch.from_numpy(x[1, :, :, 0]))
    rgb = grey_to_rgb(t)
    assert rgb.shape == (2, 3, 4, 4) and all(torch.equal(rgb[:, c], t[:, 0]) for c in range(3))
    three = torch.zeros(1, 3, 2, 2)
    assert grey_to_rgb(three) is three
    ro = np.zeros((1, 2, 2, 3), np.uint8)
    ro.flags.writeable = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        to_tensor_uint8(ro)
    assert not caught  # read-only arrays are copied, not shared with a warning


def test_normalize_and_preprocess():
    x = torch.rand(4, 3, 5, 5)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    out = normalize(x, mean, std)
    for c in range(3):
        assert torch.allclose(out[:, c], (x[:, c] - mean[c]) / std[c])
    g = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    before = g.clone()
    p = Preprocess([0.5] * 3, [0.25] * 3)
    y = p(g)
    assert y.shape == (2, 3, 32, 32) and y.dtype == torch.float32
    assert torch.allclose(y[:, 1], (g[:, 0].float() / 255 - 0.5) / 0.25)
    assert torch.equal(g, before)  # input untouched
    assert p.to_dict() == {"mean": [0.5] * 3, "std": [0.25] * 3, "size": 32}
    with pytest.raises(ValueError):
        p(g.float())


def test_channel_stats_matches_torch():
    x = torch.randint(0, 256, (9000, 2, 4, 4), dtype=torch.uint8)  # more than one chunk
    mean, std = channel_stats(x)
    xf = x.double() / 255
    assert np.allclose(mean, xf.mean((0, 2, 3)).tolist(), atol=1e-9)
    assert np.allclose(std, xf.std((0, 2, 3)).tolist(), atol=1e-7)


# ---------------------------------------------------------------- random crop and flip
def _crop_reference(x: torch.Tensor, padding: int, oy: int, ox: int) -> torch.Tensor:
    """One image: zero-pad with numpy, take the HxW window at (oy, ox)."""
    c, h, w = x.shape
    xp = np.pad(x.numpy(), ((0, 0), (padding, padding), (padding, padding)))
    return torch.from_numpy(xp[:, oy: oy + h, ox: ox + w].copy())


def test_random_crop_is_a_shifted_window_exactly():
    n, p = 400, 4
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)  # no zeros: windows are unique
    out = random_crop(x, p, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for i in range(n):
        matches = [(oy, ox) for oy in range(2 * p + 1) for ox in range(2 * p + 1)
                   if torch.equal(out[i], _crop_reference(x[i], p, oy, ox))]
        assert len(matches) == 1, f"sample {i}: output is not exactly one padded window"
        seen.add(matches[0])
    assert len(seen) > 60  # offsets spread over the 9 x 9 possibilities
    assert (4, 4) in seen  # the centre window is the original image
    # seeded: same generator state, same crops; float input works the same way
    assert torch.equal(out, random_crop(x, p, torch.Generator().manual_seed(1)))
    assert torch.equal(random_crop(x.float(), p, torch.Generator().manual_seed(1)), out.float())
    assert torch.equal(random_crop(x, 0), x)


@FAST
@given(n=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12),
       padding=st.integers(0, 5), seed=st.integers(0, 2**31 - 1))
def test_random_crop_property(n, c, h, w, padding, seed):
    x = torch.randint(1, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    out = random_crop(x, padding, torch.Generator().manual_seed(seed))
    assert out.shape == x.shape
    for i in range(n):
        padded = set(F.pad(x[i], (padding,) * 4).flatten().tolist())
        assert set(out[i].flatten().tolist()) <= padded
        # and it is one of the windows
        assert any(torch.equal(out[i], _crop_reference(x[i], padding, oy, ox))
                   for oy in range(2 * padding + 1) for ox in range(2 * padding + 1))


def test_random_hflip():
    x = torch.arange(6 * 2 * 3 * 4, dtype=torch.float32).reshape(6, 2, 3, 4)
    assert torch.equal(random_hflip(x, p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, p=0.0), x)
    g = torch.Generator().manual_seed(3)
    flip = torch.rand(6, generator=torch.Generator().manual_seed(3)) < 0.5
    out = random_hflip(x, generator=g)
    for i in range(6):
        assert torch.equal(out[i], x[i].flip(-1) if flip[i] else x[i])
    assert torch.equal(x, torch.arange(6 * 2 * 3 * 4, dtype=torch.float32).reshape(6, 2, 3, 4))


def test_preprocess_train_augments_eval_does_not():
    x = torch.randint(1, 256, (8, 3, 32, 32), dtype=torch.uint8)
    p = Preprocess([0.0] * 3, [1.0] * 3, crop_padding=4, hflip=True)
    ev = p(x, train=False)
    assert torch.allclose(ev, x.float() / 255)
    tr = p(x, train=True, generator=torch.Generator().manual_seed(0))
    assert tr.shape == ev.shape and not torch.equal(tr, ev)


# ---------------------------------------------------------------- class order and tasks
def test_class_order():
    assert class_order(10) == list(range(10))
    a, b = class_order(10, seed=1), class_order(10, seed=1)
    assert a == b and sorted(a) == list(range(10)) and a != list(range(10))
    assert class_order(10, seed=2) != a
    assert class_order(10, seed=5, order=[3, 1, 2]) == [3, 1, 2]  # explicit wins
    for bad in ([1, 1, 2], [0, 10], [-1]):
        with pytest.raises(InputError):
            class_order(10, order=bad)


def test_split_tasks_indices():
    y_tr = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4, 5])
    y_te = np.array([5, 4, 3, 2, 1, 0])
    tasks = split_tasks(y_tr, y_te, 3, 2, [3, 0, 5, 1, 4, 2])
    assert [t.classes for t in tasks] == [[3, 0], [5, 1], [4, 2]]
    assert [t.task_id for t in tasks] == [0, 1, 2]
    assert tasks[0].train_idx.tolist() == [0, 3, 4, 7] and tasks[0].test_idx.tolist() == [2, 5]
    assert tasks[1].train_idx.tolist() == [1, 5, 9] and tasks[1].test_idx.tolist() == [0, 4]
    with pytest.raises(InputError):
        split_tasks(y_tr, y_te, 4, 2, list(range(6)))
    with pytest.raises(InputError):
        split_tasks(y_tr, y_te, 0, 2, list(range(6)))
    with pytest.raises(InputError):
        split_tasks(y_tr, y_te, 2, 2, [0, 1, 1, 2])


@FAST
@given(n_classes=st.integers(1, 12), data=st.data())
def test_split_tasks_partition_property(n_classes, data):
    cpt = data.draw(st.integers(1, n_classes))
    n_tasks = data.draw(st.integers(1, n_classes // cpt))
    order = class_order(n_classes, seed=data.draw(st.integers(0, 1000)))
    y_tr = np.asarray(data.draw(st.lists(st.integers(0, n_classes - 1), max_size=60)), dtype=np.int64)
    y_te = np.asarray(data.draw(st.lists(st.integers(0, n_classes - 1), max_size=30)), dtype=np.int64)
    tasks = split_tasks(y_tr, y_te, n_tasks, cpt, order)
    used = [c for t in tasks for c in t.classes]
    assert used == order[: n_tasks * cpt] and len(set(used)) == len(used)
    for y, key in ((y_tr, "train_idx"), (y_te, "test_idx")):
        all_idx = np.concatenate([getattr(t, key) for t in tasks])
        assert len(set(all_idx.tolist())) == len(all_idx)  # disjoint
        assert sorted(all_idx.tolist()) == np.flatnonzero(np.isin(y, used)).tolist()  # covering
        for t in tasks:
            assert set(y[getattr(t, key)].tolist()) <= set(t.classes)


def test_real_split_mnist5k_stream():
    tr, te = load_dataset("mnist-5k", "train"), load_dataset("mnist-5k", "test")
    tasks = split_tasks(tr.y, te.y, 5, 2, class_order(10, seed=0))
    assert sum(len(t.train_idx) for t in tasks) == 4000 and sum(len(t.test_idx) for t in tasks) == 1000
    assert all(len(t.train_idx) == 800 and len(t.test_idx) == 200 for t in tasks)


# ---------------------------------------------------------------- TensorData
def test_tensor_data_batches():
    d = load_dataset("digits", "test")
    td = TensorData(d)
    assert td.x.shape == (len(d), 1, 32, 32) and td.x.dtype == torch.uint8 and len(td) == len(d)
    mean, std = td.stats()
    assert len(mean) == len(std) == 3 and mean[0] == mean[2]
    pre = Preprocess(mean, std)
    idx = np.flatnonzero(np.isin(d.y, [3, 7]))
    got = list(td.batches(idx, 16, pre))
    assert [len(y) for _, y in got][:-1] == [16] * (len(got) - 1)
    assert all(x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 for x, _ in got)
    ys = torch.cat([y for _, y in got])
    assert torch.equal(ys, torch.from_numpy(d.y[idx]))
    assert torch.allclose(got[0][0], pre(td.x[torch.from_numpy(idx[:16])]))
    # drop_last, shuffle: seeded, a permutation of the same samples
    assert all(len(y) == 16 for _, y in td.batches(idx, 16, pre, drop_last=True))
    s1 = torch.cat([y for _, y in td.batches(idx, 16, pre, shuffle=True, generator=torch.Generator().manual_seed(0))])
    s2 = torch.cat([y for _, y in td.batches(idx, 16, pre, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(s1, s2) and torch.equal(s1.sort().values, ys.sort().values)
    assert list(td.batches(np.array([], dtype=np.int64), 8, pre)) == []


def test_tensor_data_rgb_already_32():
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    td = TensorData(ImageDataset("t", "train", x, np.arange(5), list("abcde")))
    assert torch.equal(td.x.permute(0, 2, 3, 1), torch.from_numpy(x))
    assert len(td.stats()[0]) == 3


# ---------------------------------------------------------------- real_images (parity and calibration batches)
def test_real_images_seeded_and_normalised_like_training():
    from lightcl.data.tasks import real_images

    norm = {"mean": [0.2, 0.3, 0.4], "std": [0.5, 0.6, 0.7]}
    x, y = real_images("digits", "test", 24, norm, seed=3)
    x2, y2 = real_images("digits", "test", 24, norm, seed=3)
    assert x.shape == (24, 3, 32, 32) and x.dtype == torch.float32 and torch.equal(x, x2) and torch.equal(y, y2)
    # the same images through TensorData + Preprocess: the seeded order is torch.randperm(n, seed)
    td = TensorData(load_dataset("digits", "test"))
    idx = torch.randperm(len(td), generator=torch.Generator().manual_seed(3))[:24]
    assert torch.equal(y, td.y[idx]) and torch.allclose(x, Preprocess(norm["mean"], norm["std"])(td.x[idx]))
    # another seed, another selection; an offset continues the same order; an offset past the end restarts it
    assert not torch.equal(real_images("digits", "test", 24, norm, seed=4)[1], y)
    xo, yo = real_images("digits", "test", 8, norm, seed=3, offset=16)
    assert torch.equal(yo, y[16:24]) and torch.allclose(xo, x[16:24])
    assert torch.equal(real_images("digits", "test", 5, norm, seed=3, offset=10 ** 6)[1], y[:5])
    # the export's old import path still gives the same function
    from lightcl.export.onnx_export import real_images as old

    assert old is real_images
