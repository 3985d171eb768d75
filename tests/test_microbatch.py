"""Micro-batched extraction (engine/microbatch.py): the same features and the same learning as whole batches."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")

from lightcl.engine.errors import InputError  # noqa: E402
from lightcl.engine.export_dir import load_export_meta, load_head  # noqa: E402
from lightcl.engine.extractors import load_extractor  # noqa: E402
from lightcl.engine.learner import LightCL  # noqa: E402
from lightcl.engine.microbatch import activation_bytes_per_image, chunks, micro_batch_for_budget  # noqa: E402


@pytest.fixture(scope="module")
def batch(digits_export):
    from lightcl.data.tasks import real_images

    meta = load_export_meta(digits_export)
    x, y = real_images("digits", "train", 64, meta["normalization"], seed=5)
    keep = (y < 4)
    return x[keep][:32], y[keep][:32]


def test_chunks_cover_the_batch():
    assert chunks(10, None) == [(0, 10)] and chunks(10, 16) == [(0, 10)]
    assert chunks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert micro_batch_for_budget(100, 250) == 2 and micro_batch_for_budget(100, 50) == 1
    with pytest.raises(InputError):
        micro_batch_for_budget(0, 10)


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_micro_batched_features_equal_whole_batch(digits_export, batch, backend):
    x, _ = batch
    ext = load_extractor(digits_export, backend=backend)
    whole = ext(x)
    for k in (1, 5, 16):
        ext.set_micro_batch(k)
        assert ext.info()["micro_batch"] == k
        torch.testing.assert_close(ext(x), whole, rtol=1e-5, atol=1e-5)
    # not bit for bit: oneDNN (torch) and MLAS (onnxruntime) block a batch's convolutions by its size, so the
    # sums round differently (differences up to ~6e-6 on features of order 1: float32 rounding); the learning test bounds what that moves


def test_micro_batch_refused_with_train_mode_bn(digits_export):
    ext = load_extractor(digits_export, backend="torch", frozen_bn="train")
    with pytest.raises(InputError, match="frozen_bn='train'"):
        ext.set_micro_batch(4)
    with pytest.raises(InputError):
        ext.set_memory_budget(1 << 20)
    assert ext.micro_batch is None
    with pytest.raises(InputError):
        load_extractor(digits_export, backend="torch").set_micro_batch(0)


def test_memory_budget_sizes_the_chunk(digits_export):
    ext = load_extractor(digits_export, backend="ort")
    per = ext.activation_bytes_per_image()
    # the estimate sees at least the stem's output (16 channels x 32 x 32 float32) and the image itself
    assert per >= 16 * 32 * 32 * 4 + 3 * 32 * 32 * 4
    assert ext.set_memory_budget(int(2.5 * per)) == 2 and ext.info()["memory_budget"] == int(2.5 * per)
    tref = load_extractor(digits_export, backend="torch")
    assert tref.activation_bytes_per_image() == per  # the same estimate from the backend's own module
    assert ext.set_memory_budget(None) is None and ext.micro_batch is None


def test_estimate_leaves_train_mode_bn_alone(digits_export):
    ext = load_extractor(digits_export, backend="torch", frozen_bn="train")
    before = {k: v.clone() for k, v in ext.statistics().items()}
    ext.activation_bytes_per_image()
    assert all(torch.equal(before[k], v) for k, v in ext.statistics().items())
    assert any(m.training for m in ext.module.modules())  # still train-mode BN


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_learning_with_micro_batches_equals_whole_batches(digits_export, batch, backend):
    """Same logits and the same head weights after steps, micro-batched (3 images a run) or not (to float32 rounding)."""
    x, y = batch
    xa, ya, xb, yb = x[y < 2], y[y < 2], x[y >= 2], y[y >= 2]
    heads = []
    logits = []
    for micro in (None, 3):
        ext = load_extractor(digits_export, backend=backend)
        ext.set_micro_batch(micro)
        ln = LightCL(ext, load_head(digits_export), seed=0)
        ln.begin_task(0, [0, 1])
        ln.observe(xa, ya)
        ln.end_task()
        ln.begin_task(1, [2, 3])
        for _ in range(2):
            ln.observe(xb, yb)
        heads.append({k: v.clone() for k, v in ln.head.state_dict().items()})
        logits.append(ln.logits(x))
    # float32 rounding of the chunked convolutions, compounded over 3 steps: measured <= 1.5e-8 on weights on one
    # run, 2.2e-6 on weights and 1.3e-5 (6e-5 relative) on logits on others (the kernels oneDNN picks vary with
    # threads and machine); a wrong chunking (a chunk lost or repeated, statistics per chunk) differs by far more
    for k in heads[0]:
        torch.testing.assert_close(heads[1][k], heads[0][k], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)


def test_activation_estimate_scales_with_resolution():
    from lightcl.export.zoo import create_backbone, split_backbone

    small, _ = split_backbone(create_backbone("resnet18", num_classes=2, width=8))
    big, _ = split_backbone(create_backbone("resnet18_imagenet", num_classes=2, width=8))
    # 8 ch: CIFAR stem at 32x32 vs the ImageNet stem's 7x7/2 conv at 112x112 (before its max-pool)
    assert activation_bytes_per_image(big, (3, 224, 224)) > 10 * activation_bytes_per_image(small, (3, 32, 32))


def test_learning_auto_takes_int8_only_where_its_check_passed(digits_ckpt, digits_export, tmp_path, caplog):
    """The fastest extractor that passed its agreement check learns: int8 where the export's check passed."""
    import json
    import logging

    from lightcl.engine.extractors import int8_unusable
    from lightcl.export.onnx_export import export_checkpoint

    out = tmp_path / "i8"
    export_checkpoint(digits_ckpt, out, split="layer3", profile="jetson-nano", int8=True, calib_size=32,
                      progress=False)
    assert int8_unusable(load_export_meta(out)) is None
    with caplog.at_level(logging.INFO, logger="lightcl"):
        assert load_extractor(out, learning=True).name == "ort-int8"
    assert "learning: ort-int8 first" in caplog.text
    assert load_extractor(out).name == "ort"  # prediction keeps fp32
    assert load_extractor(digits_export, learning=True).name == "ort"  # no int8 model
    meta = json.loads((out / "meta.json").read_text())
    meta["int8"]["forced"] = True
    assert "did not pass" in int8_unusable(meta)
