"""The independent REMIND baseline (bench/methods/remind.py) against a restatement of the authors' loop
(github tyler-hayes/REMIND @ 5d619a8, REMINDModel.fit_incremental_batch), its buffer and its schedule."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

faiss = pytest.importorskip("faiss")

from lightcl.bench.methods import create_method  # noqa: E402
from lightcl.bench.methods import remind as remind_mod  # noqa: E402
from lightcl.bench.methods.base import MethodContext  # noqa: E402
from lightcl.bench.scenarios import get_scenario  # noqa: E402
from lightcl.data.stream import ScenarioData  # noqa: E402
from lightcl.engine.errors import InputError  # noqa: E402
from lightcl.engine.export_dir import load_export_meta  # noqa: E402

NSTREAM = 12  # streaming samples compared step for step


def _method(digits_ckpt, digits_export, **hp):
    s = get_scenario("smoke", epochs=1)
    ctx = MethodContext(scenario=s, ckpt=str(digits_ckpt), export_dir=str(digits_export), num_classes=10, threads=1)
    return s, create_method("remind", ctx, **hp)


def _data(s, digits_export):
    return ScenarioData(s, load_export_meta(digits_export)["normalization"])


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 16), w=st.integers(1, 16), lo=st.floats(0.01, 1.0), seed=st.integers(0, 2**32 - 1))
def test_crops_stay_inside_the_map(h, w, lo, seed):
    top, left, ch, cw = remind_mod.crop_params(h, w, (lo, 1.0), np.random.default_rng(seed))
    assert 0 <= top and 0 <= left and ch >= 1 and cw >= 1 and top + ch <= h and left + cw <= w


def test_buffer_keeps_its_budget_and_evicts_from_the_largest_class():
    b = remind_mod.PQBuffer((32, 2, 2), budget=256 * 32 * 4 + 10 * (2 * 2 * 2 + 8), codebook_size=256,
                            channels_per_codebook=16, threads=1)
    assert b.capacity == 10 and b.per_sample == 2 * 2 * 2 + 8  # 2 codebooks x 4 positions + the label
    rng = np.random.default_rng(0)
    b.train(torch.randn(1600, 32).numpy())
    codes = b.encode(torch.randn(30, 32, 2, 2))
    for k in range(8):
        b.put(k, codes[k], 0, rng)
    for k in range(8, 10):
        b.put(k, codes[k], 1, rng)
    assert len(b) == 10 and b.nbytes() <= 256 * 32 * 4 + 10 * 16
    b.put(10, codes[10], 2, rng)  # full: one of class 0 (the largest) leaves
    assert len(b) == 10 and np.bincount(b.labels).tolist() == [7, 2, 1]
    b.put(3, codes[11], 0, rng)  # a key seen again replaces its own entry (if it is still held) or takes one
    assert len(b) == 10 and len(set(b.key)) == 10
    with pytest.raises(InputError, match="holds no sample"):
        remind_mod.PQBuffer((32, 2, 2), budget=1024, codebook_size=256, channels_per_codebook=16, threads=1)
    odd = remind_mod.PQBuffer((24, 2, 2), budget=1 << 20, codebook_size=256, channels_per_codebook=16, threads=1)
    assert odd.m == 2  # 24 channels: pieces of 12, the largest divisor of 24 not above 16
    with pytest.raises(InputError, match="at least 1"):
        remind_mod.PQBuffer((32, 2, 2), budget=1 << 20, codebook_size=256, channels_per_codebook=0, threads=1)


def test_lr_decays_per_class_from_start_to_end(digits_ckpt, digits_export):
    _, m = _method(digits_ckpt, digits_export, lr_step_size=10)
    m.class_total[3] = 100
    assert m.lr_for(3) == pytest.approx(0.1)
    m.class_steps[3] = 100
    assert m.lr_for(3) == pytest.approx(0.001)
    m.class_steps[3] = 55
    assert m.lr_for(3) == pytest.approx(0.1 * (0.01 ** 0.1) ** 5)


def _restated_step(head, opt, pq, x_code, y, buf_codes, buf_labels, ixs, crops, lam, n, lr, shape):
    """One iteration of REMIND's ``fit_incremental_batch`` with mixup and crops (their code, transcribed: numpy
    codes, ``pq.decode``, per-tensor crop + bilinear resize, mixup of the two replay halves, mixup criterion)."""
    c, h, w = shape
    m = pq.M
    data_codes = np.empty((2 * n + 1, h, w, m), dtype=np.uint8)
    data_labels = torch.empty(2 * n + 1, dtype=torch.long)
    data_codes[0] = x_code.reshape(h, w, m)
    data_labels[0] = y
    for ii, v in enumerate(ixs):
        data_codes[ii + 1] = buf_codes[v].reshape(h, w, m)
        data_labels[ii + 1] = int(buf_labels[v])
    rec = pq.decode(data_codes.reshape((2 * n + 1) * h * w, m)).reshape(-1, h, w, c)
    rec = torch.from_numpy(np.transpose(rec, (0, 3, 1, 2)).copy())
    out_batch = torch.empty_like(rec)
    for k, (tens, (i, j, ch, cw)) in enumerate(zip(rec, crops)):
        out_batch[k] = F.interpolate(tens[:, i:i + ch, j:j + cw].unsqueeze(0), (h, w), mode="bilinear",
                                     align_corners=False).squeeze(0)
    mixed = lam * out_batch[1:1 + n] + (1 - lam) * out_batch[1 + n:]
    data = torch.empty((n + 1, c, h, w))
    data[0] = out_batch[0]
    data[1:] = mixed
    labels_a = torch.cat([data_labels[:1], data_labels[1:1 + n]])
    labels_b = torch.cat([data_labels[:1], data_labels[1 + n:]])
    out = head(data)
    crit = torch.nn.CrossEntropyLoss(reduction="none")
    loss = (lam * crit(out, labels_a) + (1 - lam) * crit(out, labels_b)).mean()
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_streaming_updates_equal_the_authors_loop(digits_ckpt, digits_export, monkeypatch):
    """Task 1 (base init), then 12 streaming samples: the method's head equals a head driven by the transcribed
    loop on the same codes, draws, crops and lambdas, step for step (float tolerance)."""
    s, m = _method(digits_ckpt, digits_export, replay_samples=5)
    data = _data(s, digits_export)
    g = torch.Generator().manual_seed(0)
    t0, t1 = data.tasks[0], data.tasks[1]
    m.begin_task(t0.task_id, t0.classes, n_train=len(t0.train_idx))
    for x, y, ids in data.train_batches(t0, g, with_index=True):
        m.observe(x, y, ids)
    m.end_task()
    assert m.buffer.trained and len(m.buffer) == len(t0.train_idx)  # every base sample stored once
    m.begin_task(t1.task_id, t1.classes, n_train=len(t1.train_idx))
    x, y, ids = next(iter(data.train_batches(t1, g, with_index=True)))
    x, y, ids = x[:NSTREAM], y[:NSTREAM], ids[:NSTREAM]

    head = copy.deepcopy(m.head)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5)
    opt.load_state_dict(copy.deepcopy(m.optimizer.state_dict()))  # its tensors, not shared momentum buffers
    buf_codes, buf_labels = m.buffer.codes.copy(), m.buffer.labels.copy()
    pq = m.buffer.pq
    feats = torch.as_tensor(m.extractor(x)).float()
    codes = pq.compute_codes(np.ascontiguousarray(feats.permute(0, 2, 3, 1).numpy().reshape(-1, feats.shape[1])))
    codes = codes.reshape(len(x), -1)
    record = {"ixs": [], "crops": [], "lam": []}
    real_crop = remind_mod.crop_params

    class Recording:  # the method's generator, its draws written down
        def __init__(self, rng):
            self.rng = rng

        def __getattr__(self, name):
            return getattr(self.rng, name)

        def choice(self, *a, **k):
            out = self.rng.choice(*a, **k)
            record["ixs"].append(out.copy())
            return out

        def beta(self, *a, **k):
            record["lam"].append(self.rng.beta(*a, **k))
            return record["lam"][-1]

    def spy_crop(*a, **k):
        out = real_crop(*a, **k)
        record["crops"].append(out)
        return out

    m.rng = Recording(m.rng)
    monkeypatch.setattr(remind_mod, "crop_params", spy_crop)
    lrs = []
    counts = dict(m.class_steps)
    for i in range(len(x)):
        col = int(m.to_index(y[i:i + 1])[0])
        c = m.config
        gamma = np.exp(c.lr_step_size * np.log(c.end_lr / c.start_lr) / m.class_total[col])
        lrs.append(c.start_lr * gamma ** (counts.get(col, 0) // c.lr_step_size))
        counts[col] = counts.get(col, 0) + 1
    m.observe(x, y, ids)
    monkeypatch.undo()

    cols = m.to_index(y)
    n = 5
    head.train()
    for i in range(len(x)):
        crops = record["crops"][i * (2 * n + 1):(i + 1) * (2 * n + 1)]
        _restated_step(head, opt, pq, codes[i], int(cols[i]), buf_codes, buf_labels, record["ixs"][i], crops,
                       float(record["lam"][i]), n, lrs[i], tuple(m.head.in_features))
        # then the new sample enters the buffer (their latent_dict[item_ix] = [x, y]): not full here
        buf_codes[len(t0.train_idx) + i], buf_labels[len(t0.train_idx) + i] = codes[i], int(cols[i])
    for (k, a), b in zip(m.head.state_dict().items(), head.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-4), k


def test_prediction_goes_through_the_quantiser(digits_ckpt, digits_export):
    s, m = _method(digits_ckpt, digits_export)
    data = _data(s, digits_export)
    t0 = data.tasks[0]
    m.begin_task(t0.task_id, t0.classes, n_train=len(t0.train_idx))
    for x, y, ids in data.train_batches(t0, torch.Generator().manual_seed(0), with_index=True):
        m.observe(x, y, ids)
    m.end_task()
    x = next(iter(data.train_batches(t0, torch.Generator().manual_seed(1))))[0][:8]
    f = torch.as_tensor(m.extractor(x)).float()
    m.head.eval()
    with torch.no_grad():
        want = m.head(m.buffer.decode(m.buffer.encode(f)))
    assert torch.allclose(m.logits(x), want, atol=1e-6)
    d = m.describe()["replay"]
    assert d["bytes"] <= d["budget_bytes"] == 2 * 1024 * 1024 and d["samples"] == len(t0.train_idx)


@pytest.mark.parametrize("hp,match", [({"start_lr": 0.001, "end_lr": 0.01}, "end_lr"),
                                      ({"replay_samples": 0}, "replay_samples"),
                                      ({"replay_budget": "1KiB"}, "holds no sample"),
                                      ({"replay_budget": "lots"}, "replay_budget")])
def test_bad_hyperparameters_are_one_line(digits_ckpt, digits_export, hp, match):
    with pytest.raises(InputError, match=match):
        _method(digits_ckpt, digits_export, **hp)
