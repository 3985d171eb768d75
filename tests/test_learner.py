"""The LightCL learner: algorithm pieces, the API contract, state round trips, the smoke scenario."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lightcl.engine.errors import InputError, IntegrityError, UnknownClassError, UnknownTaskError
from lightcl.engine.learner import LightCL
from lightcl.engine.memory import FeaturePatternMemory, vital_channels


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lightcl", *args], capture_output=True, text=True, timeout=timeout)


def test_vital_channels_matches_authors_rule():
    act = torch.zeros(2, 20, 3, 3)
    for c in range(20):
        act[:, c] = c  # channel c has score proportional to c
    m = vital_channels(act, 0.15)
    # authors' rule: n_keep = int(20*0.15+0.5) = 3, threshold = kthvalue(score, 20-3) -> 4 channels kept
    assert m.tolist() == [c >= 16 for c in range(20)]
    assert vital_channels(-act, 0.15).tolist() == m.tolist()  # |activation|


def test_penalty_is_masked_sum_and_logits_unmasked():
    mem = FeaturePatternMemory(buffer_size=2, ratio=0.5)
    mem.set_buffer(torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]), task_id=1)
    old = {"conv": torch.zeros(2, 2, 1, 1), "logits": torch.zeros(2, 3)}
    mem.record_targets(old)
    mem.masks = {"conv": torch.tensor([True, False])}
    new = {"conv": torch.ones(2, 2, 1, 1), "logits": torch.ones(2, 3)}
    # masked conv: 2 samples x 1 channel x 1 = 2; logits unmasked: 6. beta 0.5 -> 4
    assert mem.penalty(new, 0.5).item() == pytest.approx(4.0)


class _TorchExtractor:
    """The frozen part as a plain module: for unit tests that need no export."""

    def __init__(self, frozen, frozen_id="test"):
        self.frozen, self.frozen_id = frozen, frozen_id
        self.meta = {"input_shape": [3, 32, 32]}

    def __call__(self, x):
        with torch.no_grad():
            return self.frozen(x)


@pytest.fixture()
def learner():
    from lightcl.export.zoo import create_backbone, split_backbone

    torch.manual_seed(0)
    frozen, head = split_backbone(create_backbone("resnet18", width=16).eval(), "layer3")
    return LightCL(_TorchExtractor(frozen), head, num_classes=4)


def _batch(labels, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.tensor([labels[i % len(labels)] for i in range(n)])


def test_memory_flow_across_tasks(learner):
    learner.begin_task(0, [0, 1])
    x, y = _batch([0, 1])
    out = learner.observe(x, y)
    assert out["feature_pattern"] == 0.0 and out["skipped"] == 0  # task 0: cross-entropy only
    learner.end_task()
    assert set(learner.memory.masks) == {"layer4.0.conv1", "layer4.0", "layer4.1.conv1", "layer4.1"}
    learner.begin_task(1, [2, 3])
    x2, y2 = _batch([2, 3], n=20, seed=1)
    out = learner.observe(x2, y2)
    assert len(learner.memory) == 15  # first 15 samples of the new task's first batch
    assert torch.equal(learner.memory.labels, y2[:15])
    assert learner.memory.features.shape[1:] == learner.head.in_features  # features, not images
    out = learner.observe(x2, y2)
    assert out["feature_pattern"] > 0.0
    learner.end_task()
    assert set(learner.predict(x2).tolist()) <= {0, 1, 2, 3}
    assert set(learner.predict(x2, mode="til", task_id=1).tolist()) <= {2, 3}


def test_bad_inputs_raise_typed_errors_and_change_nothing(learner):
    learner.begin_task(0, [0, 1])
    before = {k: v.clone() for k, v in learner.head.state_dict().items()}
    x, y = _batch([0, 1])
    with pytest.raises(UnknownClassError):
        learner.observe(x, torch.tensor([5] * 8))
    with pytest.raises(InputError):
        learner.observe(x[:, :1], y)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        learner.observe(bad, y)
    with pytest.raises(UnknownTaskError):
        learner.predict(x, mode="til", task_id=7)
    with pytest.raises(InputError):
        learner.begin_task(1, [2])  # task 0 still open
    for k, v in learner.head.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_nonfinite_loss_skips_update(learner, monkeypatch):
    learner.begin_task(0, [0, 1])
    x, y = _batch([0, 1])
    before = {k: v.clone() for k, v in learner.head.state_dict().items()}
    monkeypatch.setattr(learner, "extract", lambda x: torch.full((x.shape[0], *learner.head.in_features), float("inf")))
    out = learner.observe(x, y)
    assert out["skipped"] == 1 and learner.counters["skipped_nonfinite"] == 1
    for k, v in learner.head.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_expandable_classifier_and_reservoir():
    from lightcl.export.zoo import create_backbone, split_backbone

    frozen, head = split_backbone(create_backbone("resnet18", width=16).eval(), "layer3")
    lr = LightCL(_TorchExtractor(frozen), head, num_classes=None, buffer_policy="reservoir", buffer_size=5)
    lr.begin_task(0, [7, 3])
    x, y = _batch([7, 3])
    lr.observe(x, y)
    lr.end_task()
    assert lr.head.num_classes == 2 and len(lr.memory) == 5
    w_old = lr.head.fc.weight.detach().clone()
    lr.begin_task(1, [11])
    assert lr.head.num_classes == 3 and torch.equal(lr.head.fc.weight[:2], w_old)
    assert bool(lr.memory.target_valid.all())  # old-task samples got targets at begin_task
    x2, y2 = _batch([11])
    lr.observe(x2, y2)  # the first step starts from the targets: penalty 0
    assert lr.observe(x2, y2)["feature_pattern"] > 0
    lr.end_task()
    assert set(lr.predict(x2).tolist()) <= {7, 3, 11}


def test_state_roundtrip_predicts_identically(learner, tmp_path):
    learner.begin_task(0, [0, 1])
    x, y = _batch([0, 1])
    learner.observe(x, y)
    learner.end_task()
    learner.begin_task(1, [2, 3])
    x2, y2 = _batch([2, 3], n=16, seed=2)
    learner.observe(x2, y2)
    learner.save(tmp_path / "s")
    loaded = LightCL.load(tmp_path / "s", learner.extractor)
    assert torch.equal(loaded.logits(x2), learner.logits(x2))
    # training continues identically from the saved state
    a, b = learner.observe(x2, y2), loaded.observe(x2, y2)
    assert a["loss"] == pytest.approx(b["loss"], rel=0, abs=0)
    assert torch.equal(loaded.logits(x2), learner.logits(x2))


def test_state_against_other_frozen_part_refused(learner, tmp_path):
    learner.begin_task(0, [0, 1])
    learner.observe(*_batch([0, 1]))
    learner.end_task()
    learner.save(tmp_path / "s")
    other = _TorchExtractor(learner.extractor.frozen, frozen_id="another-frozen-part")
    with pytest.raises(IntegrityError, match="frozen part"):
        LightCL.load(tmp_path / "s", other)


def test_end_task_without_a_batch_never_uses_a_remainder(learner):
    from lightcl.export.zoo import create_backbone, split_backbone

    torch.manual_seed(0)
    frozen, head = split_backbone(create_backbone("resnet18", width=16).eval(), "layer3")
    twin = LightCL(_TorchExtractor(frozen), head, num_classes=4)
    twin.head.load_state_dict(learner.head.state_dict())
    full, rest = _batch([0, 1], n=12, seed=3), _batch([0, 1], n=3, seed=4)
    for lr in (learner, twin):
        lr.begin_task(0, [0, 1])
        lr.observe(*full)
        lr.observe(*rest)  # a trailing remainder of 3 images
    learner.end_task()  # no batch: the last full-size one
    with torch.no_grad():  # the twin's head BN must have seen the same passes before its masks
        twin.end_task(full[0])
    for name, m in twin.memory.masks.items():
        assert torch.equal(learner.memory.masks[name], m), name


def test_begin_task_takes_the_buffer_from_a_fresh_batch(learner):
    learner.begin_task(0, [0, 1])
    learner.observe(*_batch([0, 1]))
    learner.end_task()
    x, y = _batch([2, 3], n=20, seed=5)
    with pytest.raises(InputError, match="both x and y"):
        learner.begin_task(1, [2, 3], x)
    with pytest.raises(UnknownClassError):
        learner.begin_task(1, [2, 3], x, torch.zeros(20, dtype=torch.long))
    assert learner.current_task is None  # refused before anything changed
    learner.begin_task(1, [2, 3], x, y)
    assert not learner._pending_capture and torch.equal(learner.memory.labels, y[:15])
    assert learner.memory.images is None  # eval-mode frozen BN: features, not images
    xb, yb = _batch([2, 3], n=8, seed=6)
    out = learner.observe(xb, yb)
    assert out["feature_pattern"] == 0.0  # the first step starts from the targets
    assert torch.equal(learner.memory.labels, y[:15])  # not replaced by the first observed batch


def test_train_mode_frozen_bn_learns_in_train_mode_and_predicts_in_eval_mode(digits_export, tmp_path):
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor

    ext = load_extractor(digits_export, "torch", frozen_bn="train")
    lr = LightCL(ext, load_head(digits_export), num_classes=4)
    assert lr.frozen_bn == "train"
    lr.begin_task(0, [0, 1])
    x, y = _batch([0, 1], n=8)
    lr.observe(x, y)
    lr.end_task()
    stats = ext.statistics()
    a = lr.logits(x)
    b = lr.logits(x[:2])  # eval mode: a sample's logits do not depend on its batch, and nothing drifts
    assert torch.allclose(a[:2], b, atol=1e-5)
    assert all(torch.equal(v, ext.statistics()[k]) for k, v in stats.items())
    lr.begin_task(1, [2, 3], *_batch([2, 3], n=20, seed=1))
    assert lr.memory.images is not None and lr.memory.images.shape[0] == 15  # the buffer's images are kept
    before = ext.statistics()
    out = lr.observe(*_batch([2, 3], n=8, seed=2))
    assert out["skipped"] == 0 and out["feature_pattern"] == 0.0
    assert not all(torch.equal(v, ext.statistics()[k]) for k, v in before.items())  # learning drifts them
    # an eval-mode state is not reopened with train-mode BN, nor the other way round
    lr.save(tmp_path / "train")
    with pytest.raises(InputError, match="frozen_bn='train'"):
        LightCL.load(tmp_path / "train", load_extractor(digits_export, "torch"))
    ev = LightCL(load_extractor(digits_export, "torch"), load_head(digits_export), num_classes=4)
    ev.save(tmp_path / "eval")
    with pytest.raises(InputError, match="frozen_bn='eval'"):
        LightCL.load(tmp_path / "eval", load_extractor(digits_export, "torch", frozen_bn="train"))
    # a resumed state continues exactly (buffer images, drifted statistics)
    other = LightCL.load(tmp_path / "train", load_extractor(digits_export, "torch", frozen_bn="train"))
    xb, yb = _batch([2, 3], n=8, seed=3)
    assert lr.observe(xb, yb)["loss"] == other.observe(xb, yb)["loss"]
    assert torch.equal(lr.logits(xb), other.logits(xb))


def test_train_mode_skipped_step_restores_the_frozen_statistics(digits_export):
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor

    ext = load_extractor(digits_export, "torch", frozen_bn="train")
    lr = LightCL(ext, load_head(digits_export), num_classes=4)
    lr.begin_task(0, [0, 1])
    before = ext.statistics()
    x, y = _batch([0, 1], n=8)
    with torch.no_grad():
        lr.head.fc.bias.fill_(float("nan"))  # a non-finite loss: the step is skipped
    out = lr.observe(x, y)
    assert out["skipped"] == 1
    assert all(torch.equal(v, ext.statistics()[k]) for k, v in before.items())


# ---------------------------------------------------------------- the smoke scenario, through the CLI
def test_smoke_learns_and_resume_matches_uninterrupted(digits_export, tmp_path):
    full = tmp_path / "full.json"
    r = _cli("learn", str(digits_export), "--scenario", "smoke", "--backend", "ort", "--state",
             str(tmp_path / "s_full"), "--json", str(full), "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads(full.read_text())
    assert res["final_til"] >= 0.9, res["til"]
    assert len(res["til"]) == 5 and len(res["cil"][-1]) == 5
    # interrupted after 2 tasks, then resumed
    part = tmp_path / "part.json"
    r = _cli("learn", str(digits_export), "--scenario", "smoke", "--backend", "ort", "--state",
             str(tmp_path / "s_part"), "--max-tasks", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    r = _cli("learn", str(digits_export), "--scenario", "smoke", "--backend", "ort", "--state",
             str(tmp_path / "s_part"), "--resume", "--json", str(part), "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads(part.read_text())["til"] == res["til"]
    assert json.loads(part.read_text())["cil"] == res["cil"]
    # predict with the learned state
    pj = tmp_path / "pred.json"
    r = _cli("predict", str(tmp_path / "s_full"), "--dataset", "digits", "--mode", "til", "--json", str(pj))
    assert r.returncode == 0, r.stderr
    assert json.loads(pj.read_text())["accuracy"] >= 0.85
