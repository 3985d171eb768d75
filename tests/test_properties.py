"""Property-based tests (hypothesis): transforms, task splitting, vital-channel masks, state round trips.

The round trips use the real digits export (onnxruntime extractor) and draw option combinations:
save at any point (mid-task or between tasks) then load must give bit-identical logits, and training
continued from both (same batches, next task too) must stay bit-identical.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lightcl.data.tasks import TensorData, class_order, split_tasks
from lightcl.data.transforms import (Preprocess, channel_stats, grey_to_rgb, normalize, random_hflip, resize_uint8,
                                      to_tensor_uint8)
from lightcl.engine.errors import InputError
from lightcl.engine.memory import FeaturePatternMemory, vital_channels

FAST = settings(max_examples=40, deadline=None)
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


def _u8(seed: int, shape) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ---------------------------------------------------------------- transforms
@FAST
@given(n=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20), c=st.sampled_from([1, 3]), seed=st.integers(0, 99))
def test_to_tensor_roundtrip(n, h, w, c, seed):
    a = np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    t = to_tensor_uint8(a)
    assert t.shape == (n, c, h, w) and t.dtype == torch.uint8
    assert np.array_equal(t.permute(0, 2, 3, 1).numpy(), a)


@FAST
@given(n=st.integers(1, 3), c=st.sampled_from([1, 3]), src=st.integers(2, 40), size=st.integers(2, 40),
       seed=st.integers(0, 99), value=st.integers(0, 255))
def test_resize_shape_range_identity_and_constants(n, c, src, size, seed, value):
    x = _u8(seed, (n, c, src, src))
    y = resize_uint8(x, size)
    assert y.shape == (n, c, size, size) and y.dtype == torch.uint8
    # bilinear (antialiased) output stays within the input's range, image by image and channel by channel
    assert bool((y.amin((2, 3)) >= x.amin((2, 3))).all()) and bool((y.amax((2, 3)) <= x.amax((2, 3))).all())
    if size == src:
        assert resize_uint8(x, size) is x
    flat = torch.full((1, c, src, src), value, dtype=torch.uint8)
    assert bool((resize_uint8(flat, size) == value).all())


@FAST
@given(seed=st.integers(0, 999), c=st.sampled_from([1, 3]),
       mean=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
       std=st.lists(st.floats(0.05, 2.0), min_size=3, max_size=3))
def test_normalize_inverts_and_preprocess_is_finite_float(seed, c, mean, std):
    x = _u8(seed, (2, c, 8, 8))
    pre = Preprocess(mean, std, size=8)
    y = pre(x)
    assert y.dtype == torch.float32 and y.shape == (2, 3, 8, 8) and bool(torch.isfinite(y).all())
    back = y * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.allclose(back, grey_to_rgb(x).float() / 255.0, atol=1e-5)
    z = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(normalize(z, [0.0] * 3, [1.0] * 3), z)


@FAST
@given(n=st.integers(1, 6), seed=st.integers(0, 999), p=st.sampled_from([0.0, 0.5, 1.0]))
def test_hflip_flips_each_image_or_keeps_it(n, seed, p):
    x = torch.rand(n, 3, 5, 7, generator=torch.Generator().manual_seed(seed))
    y = random_hflip(x, p=p, generator=torch.Generator().manual_seed(seed + 1))
    for i in range(n):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))
    if p == 0.0:
        assert torch.equal(y, x)
    if p == 1.0:
        assert torch.equal(y, x.flip(-1))
    assert torch.equal(x, torch.rand(n, 3, 5, 7, generator=torch.Generator().manual_seed(seed)))  # input untouched


@FAST
@given(seed=st.integers(0, 999), c=st.sampled_from([1, 3]), n=st.integers(1, 5))
def test_channel_stats_match_float64_reference(seed, c, n):
    x = _u8(seed, (n, c, 6, 6))
    mean, std = channel_stats(x)
    xf = x.double() / 255.0
    assert np.allclose(mean, xf.mean((0, 2, 3)).tolist(), atol=1e-9)
    ref = xf.transpose(0, 1).reshape(c, -1).std(1).clamp_min(1e-3) if n * 36 > 1 else torch.full((c,), 1e-3)
    assert np.allclose(std, ref.tolist(), atol=1e-7)


# ---------------------------------------------------------------- task splitting
@FAST
@given(k=st.integers(1, 30), seed=st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_class_order_is_a_seeded_permutation(k, seed):
    o = class_order(k, seed)
    assert sorted(o) == list(range(k))
    assert o == class_order(k, seed)  # reproducible
    if seed is None:
        assert o == list(range(k))


@FAST
@given(k=st.integers(2, 12), data=st.data())
def test_invalid_class_orders_are_refused(k, data):
    bad = data.draw(st.one_of(
        st.lists(st.integers(0, k - 1), min_size=2, max_size=k).filter(lambda o: len(set(o)) < len(o)),  # repeats
        st.lists(st.integers(k, 3 * k), min_size=1, max_size=3),  # out of range
        st.lists(st.integers(-5, -1), min_size=1, max_size=3)))
    with pytest.raises(InputError):
        class_order(k, order=bad)


@FAST
@given(k=st.integers(2, 10), n=st.integers(1, 200), data=st.data())
def test_split_tasks_partition_and_batches_cover_each_sample_once(k, n, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 999)))
    y_train, y_test = rng.integers(0, k, n), rng.integers(0, k, max(1, n // 3))
    cpt = data.draw(st.integers(1, k))
    n_tasks = data.draw(st.integers(1, k // cpt))
    order = class_order(k, data.draw(st.integers(0, 99)))
    tasks = split_tasks(y_train, y_test, n_tasks, cpt, order)
    seen = set()
    for t in tasks:
        assert len(t.classes) == cpt and not (set(t.classes) & seen)
        seen |= set(t.classes)
        assert np.array_equal(t.train_idx, np.flatnonzero(np.isin(y_train, t.classes)))
        assert np.array_equal(t.test_idx, np.flatnonzero(np.isin(y_test, t.classes)))
    assert [c for t in tasks for c in t.classes] == order[:n_tasks * cpt]
    with pytest.raises(InputError):
        split_tasks(y_train, y_test, k // cpt + 1, cpt, order)
    # batches of a task: every sample exactly once, shuffled or not, with its own label
    from lightcl.data.datasets import ImageDataset

    ds = ImageDataset("toy", "train", rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8), y_train.astype(np.int64),
                      [str(i) for i in range(k)], "memory")
    td = TensorData(ds, size=4)
    pre = Preprocess([0.5] * 3, [0.25] * 3, size=4)
    t = tasks[0]
    bs = data.draw(st.integers(1, 17))
    got = [yb for _, yb in td.batches(t.train_idx, bs, pre, shuffle=data.draw(st.booleans()),
                                       generator=torch.Generator().manual_seed(1))]
    labels = torch.cat(got).tolist() if got else []
    assert sorted(labels) == sorted(y_train[t.train_idx].tolist())
    assert all(len(g) <= bs for g in got)


# ---------------------------------------------------------------- vital channels and OR-accumulated masks
def _acts(seed: int, n: int, c: int, hw: int, distinct: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, c, hw, hw, generator=g)
    if distinct:  # make channel scores distinct for sure
        a = a + torch.arange(c, dtype=torch.float32).view(1, c, 1, 1) * 1e-3 * torch.sign(a + 1e-9)
    return a


@FAST
@given(seed=st.integers(0, 10 ** 6), n=st.integers(1, 4), c=st.integers(1, 48), hw=st.integers(1, 4),
       ratio=st.floats(0.01, 1.0))
def test_vital_channel_count_and_top_rule(seed, n, c, hw, ratio):
    a = _acts(seed, n, c, hw, distinct=True)
    score = a.abs().sum((0, 2, 3))
    assume(len(set(score.tolist())) == c)
    m = vital_channels(a, ratio)
    n_keep = int(c * ratio + 0.5)
    assert m.dtype == torch.bool and m.shape == (c,)
    assert int(m.sum()) == min(c, n_keep + 1)  # the authors' inclusive threshold keeps one more
    kept, dropped = score[m], score[~m]
    assert dropped.numel() == 0 or bool(kept.min() > dropped.max())  # the kept ones are the top scores
    assert torch.equal(vital_channels(-a, ratio), m)  # |activation|
    assert torch.equal(vital_channels(a * 4.0, ratio), m)  # exact power-of-two scaling


@FAST
@given(seed=st.integers(0, 10 ** 6), c=st.integers(1, 40), r1=st.floats(0.01, 1.0), r2=st.floats(0.01, 1.0))
def test_vital_channels_monotone_in_ratio(seed, c, r1, r2):
    a = _acts(seed, 3, c, 3, distinct=False)
    lo, hi = sorted((r1, r2))
    m_lo, m_hi = vital_channels(a, lo), vital_channels(a, hi)
    assert bool((m_lo <= m_hi).all())  # a larger ratio keeps a superset
    assert int(m_lo.sum()) >= min(c, int(c * lo + 0.5))  # ties never shrink the count


@FAST
@given(seed=st.integers(0, 10 ** 6), c=st.integers(2, 32), ratio=st.floats(0.05, 1.0))
def test_vital_channels_permutation_equivariant(seed, c, ratio):
    a = _acts(seed, 2, c, 3, distinct=False)
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(vital_channels(a[:, perm].contiguous(), ratio), vital_channels(a, ratio)[perm])


@FAST
@given(seeds=st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=6), c=st.integers(1, 24),
       ratio=st.floats(0.05, 1.0))
def test_masks_or_accumulate_and_never_shrink(seeds, c, ratio):
    mem = FeaturePatternMemory(buffer_size=4, ratio=ratio)
    acc = torch.zeros(c, dtype=torch.bool)
    for s in seeds:
        taps = {"conv": _acts(s, 2, c, 2, distinct=False), "logits": torch.randn(2, 5)}
        before = mem.masks.get("conv", torch.zeros(c, dtype=torch.bool)).clone()
        mem.update_masks(taps)
        acc |= vital_channels(taps["conv"], ratio)
        assert torch.equal(mem.masks["conv"], acc)  # OR of every task's vital channels
        assert bool((before <= mem.masks["conv"]).all())  # never loses a channel
        assert "logits" not in mem.masks  # logits are regularised unmasked
    again = mem.masks["conv"].clone()
    mem.update_masks({"conv": _acts(seeds[0], 2, c, 2, distinct=False)})
    assert torch.equal(mem.masks["conv"], again)  # idempotent for a task already seen


# ---------------------------------------------------------------- state round trips
@pytest.fixture(scope="module")
def rt_env(digits_export):
    from lightcl.data.datasets import load_dataset
    from lightcl.engine.export_dir import load_export_meta
    from lightcl.engine.extractors import load_extractor

    meta = load_export_meta(digits_export)
    pre = Preprocess(meta["normalization"]["mean"], meta["normalization"]["std"])
    data = TensorData(load_dataset("digits", "train"))
    ext = load_extractor(digits_export, backend="ort", threads=1)
    return digits_export, ext, data, pre


OPTIONS = st.fixed_dictionaries({
    "momentum": st.sampled_from([0.0, 0.9]),
    "weight_decay": st.sampled_from([0.0, 5e-4]),
    "beta": st.sampled_from([0.0, 2e-4, 0.5]),
    "buffer_size": st.sampled_from([0, 3, 15]),
    "ratio": st.sampled_from([0.05, 0.15, 0.5, 1.0]),
    "buffer_policy": st.sampled_from(["new-task-first-batch", "reservoir"]),
    "loss_slice": st.sampled_from(["task", "all"]),
    "num_classes": st.sampled_from([None, 10]),
    "reset_classifier": st.booleans(),
    "seed": st.integers(0, 3),
})


@SLOW
@given(opts=OPTIONS, n_tasks=st.integers(1, 3), steps=st.integers(1, 2), save_mid_task=st.booleans(),
       seed=st.integers(0, 99))
def test_state_roundtrip_same_logits_and_same_continued_training(rt_env, tmp_path_factory, opts, n_tasks, steps,
                                                                 save_mid_task, seed):
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.learner import LightCL

    export, ext, data, pre = rt_env
    rng = np.random.default_rng(seed)
    y_all = data.y.numpy()

    def batch(task):
        idx = np.concatenate([rng.choice(np.flatnonzero(y_all == d), 4, replace=False) for d in (2 * task, 2 * task + 1)])
        b = torch.as_tensor(idx)
        return pre(data.x[b]), data.y[b]

    lr = LightCL(ext, load_head(export), **opts)
    for t in range(n_tasks):
        lr.begin_task(t, [2 * t, 2 * t + 1])
        for _ in range(steps):
            lr.observe(*batch(t))
        if not (save_mid_task and t == n_tasks - 1):
            lr.end_task()
    d = tmp_path_factory.mktemp("rt") / "state"
    lr.save(d)
    lr2 = LightCL.load(d, ext)
    probe, _ = batch(0)
    assert torch.equal(lr.logits(probe), lr2.logits(probe))
    assert lr2.counters == lr.counters and lr2.tasks == lr.tasks and lr2.class_index == lr.class_index
    # continue both identically: finish or start a task, train, end it
    nxt = n_tasks - 1 if lr.current_task is not None else n_tasks
    if lr.current_task is None:
        for m in (lr, lr2):
            m.begin_task(nxt, [2 * nxt, 2 * nxt + 1])
    xb, yb = batch(nxt)
    for _ in range(2):
        a, b = lr.observe(xb, yb), lr2.observe(xb, yb)
        assert (a["loss"], a["ce"], a["feature_pattern"]) == (b["loss"], b["ce"], b["feature_pattern"])
    lr.end_task()
    lr2.end_task()
    assert torch.equal(lr.logits(probe), lr2.logits(probe))
    assert all(torch.equal(lr.memory.masks[k], lr2.memory.masks[k]) for k in lr.memory.masks)
    assert torch.equal(lr.predict(probe, mode="til", task_id=0), lr2.predict(probe, mode="til", task_id=0))
