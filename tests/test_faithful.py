"""The engine in the authors' mode reproduces the authors' LightCL loop step for step (issue 9).

``authors_loop`` below re-states github INV-WZQ/LightCL, LightCL.py at commit 62fda8b (``train``,
``my_train``, ``my_process``, ``test``) on its own: the whole model (frozen part + head composed in
torch, taps as in their models.py), train mode while learning, the buffer pushed through the whole
model first at every step, their vital-channel rule written out again, prediction with
``model.eval()``. It shares no algorithm code with the engine, only the network weights and the data.
The engine runs beside it with the torch extractor and ``frozen_bn="train"`` on the same initial weights
and the same batches (real digits, width-16 ResNet-18, 3 tasks, 2 epochs each, trailing remainders
included).
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightcl.engine.errors import InputError
from lightcl.engine.export_dir import load_export_meta, load_head
from lightcl.engine.extractors import load_extractor
from lightcl.engine.frozen import load_frozen
from lightcl.engine.learner import LightCL

N_TASKS, EPOCHS, BATCH = 3, 2, 32
LR, BETA, BUFFER, RATIO = 0.01, 2e-4, 15, 0.15  # the authors' defaults


class WholeModel(nn.Module):
    """Frozen part + head as one network returning ``(logits, taps)`` like the authors' ResNet.forward:
    for each block after the split, its first conv after BN+ReLU and its output; then the logits."""

    def __init__(self, frozen: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.frozen, self.head = frozen, head

    def forward(self, x):
        for block in self.frozen.blocks:
            x = block(x)
        taps = {}
        for name, b in zip(self.head.block_names, self.head.blocks):
            h = F.relu(b.bn1(b.conv1(x)))
            taps[f"{name}.conv1"] = h
            x = F.relu(b.bn2(b.conv2(h)) + b.shortcut(x))
            taps[name] = x
        out = self.head.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        taps["logits"] = out
        return out, taps


def authors_loop(model: WholeModel, stream: list[dict], test: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Their my_process, with their task slices (task t owns outputs 2t, 2t+1; labels are output indices)."""
    for p in model.frozen.parameters():
        p.requires_grad = False  # their '4_1' rule: only the blocks after the split and the classifier train
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    masks: dict[str, torch.Tensor] = {}
    losses, mask_log, til_rows, cil_rows = [], [], [], []
    for task, data in enumerate(stream):
        lo, hi = 2 * task, 2 * task + 2
        model.train()
        if task == 0:  # train(): plain cross-entropy on the task's slice
            for x, y in data["batches"]:
                optimizer.zero_grad()
                out, _ = model(x)
                loss = F.cross_entropy(out[:, lo:hi], y - lo)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        else:
            buffer_x = data["buffer"][0][:BUFFER].detach()
            _, standard = model(buffer_x)  # targets: one train-mode pass on the buffer alone
            standard = {k: v.detach() for k, v in standard.items()}
            for x, y in data["batches"]:  # my_train
                optimizer.zero_grad()
                l_act = 0
                _, feats = model(buffer_x.clone())  # the buffer first
                for name in feats:
                    if name == "logits" or RATIO == 1.0:
                        l_act += torch.sum(BETA * ((standard[name] - feats[name]) ** 2))
                    else:
                        m = masks[name].detach()[:, None, None].expand(-1, *feats[name].shape[2:]).expand_as(feats[name])
                        l_act += torch.sum(BETA * ((feats[name] - standard[name]).mul(m)) ** 2)
                out, _ = model(x)
                loss = F.cross_entropy(out[:, lo:hi], y - lo) + l_act
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        model.train()  # vital channels: a fresh full batch through the train-mode model
        _, feats = model(data["fresh"])
        for name, act in feats.items():
            if name == "logits":
                continue
            channels = act.shape[1]
            score = act.detach().permute(1, 0, 2, 3).abs().sum(-1).sum(-1).sum(-1)
            n_keep = int(channels * RATIO + 0.5)
            threshold = torch.kthvalue(score.flatten(), max(1, channels - n_keep))[0]
            vital = score >= threshold
            masks[name] = vital if task == 0 else torch.logical_or(masks[name], vital)
        mask_log.append({k: v.clone() for k, v in masks.items()})
        model.eval()  # test(): prediction with the whole model in eval mode
        til, cil = [], []
        with torch.no_grad():
            for t in range(task + 1):
                x, y = test[t]
                out, _ = model(x)
                til.append(int((out[:, 2 * t:2 * t + 2].argmax(1) == y - 2 * t).sum()) / len(y))
                cil.append(int((out.argmax(1) == y).sum()) / len(y))  # every output, seen or not
        til_rows.append(til)
        cil_rows.append(cil)
    return {"losses": losses, "masks": mask_log, "til": til_rows, "cil": cil_rows}


@pytest.fixture(scope="module")
def side_by_side(digits_export):
    from lightcl.bench.runner import ScenarioData
    from lightcl.bench.scenarios import get_scenario

    torch.manual_seed(0)
    meta = load_export_meta(digits_export)
    data = ScenarioData(get_scenario("smoke"), meta["normalization"])
    g = torch.Generator().manual_seed(1)
    stream, engine_stream, test, test_raw = [], [], [], []
    for task in data.tasks[:N_TASKS]:
        fresh = data.fresh_batch(task, g)
        batches = [b for _ in range(EPOCHS) for b in data.train_batches(task, g)]
        vital = data.fresh_batch(task, g)[0]
        lut = {c: 2 * task.task_id + i for i, c in enumerate(task.classes)}
        to_index = lambda y: torch.tensor([lut[int(v)] for v in y])  # noqa: E731
        stream.append({"buffer": (fresh[0], to_index(fresh[1])), "batches": [(x, to_index(y)) for x, y in batches],
                       "fresh": vital})
        engine_stream.append((task, fresh, batches, vital))
        xt, yt = next(iter(data.test.batches(task.test_idx, 10_000, data.pre_eval)))
        test.append((xt, to_index(yt)))
        test_raw.append((task.task_id, xt, yt))

    assert any(len(x) < BATCH for _, _, batches, _ in engine_stream for x, _ in batches)  # remainders included
    ext = load_extractor(digits_export, "torch", frozen_bn="train")
    learner = LightCL(ext, load_head(digits_export), num_classes=2 * N_TASKS, seed=0)
    frozen, _ = load_frozen(digits_export / "frozen.safetensors")
    model = WholeModel(frozen, copy.deepcopy(learner.head))  # the same initial weights, fresh classifier included
    ref = authors_loop(model, stream, test)

    losses, masks, til, cil = [], [], [], []
    for task, fresh, batches, vital in engine_stream:
        learner.begin_task(task.task_id, task.classes, *fresh)
        for x, y in batches:
            losses.append(learner.observe(x, y)["loss"])
        learner.end_task(vital)
        masks.append({k: v.clone() for k, v in learner.memory.masks.items()})
        res = learner.evaluate([(t, [(xt, yt)]) for t, xt, yt in test_raw[:task.task_id + 1]])
        til.append(res["til"])
        cil.append(res["cil"])
    learner.extra["export_dir"] = str(digits_export)
    return {"ref": ref, "model": model, "learner": learner, "losses": losses, "masks": masks, "til": til,
            "cil": cil, "test": test, "export": digits_export}


def test_engine_reproduces_the_authors_loop(side_by_side):
    s = side_by_side
    ref = s["ref"]
    assert len(s["losses"]) == len(ref["losses"]) > 3 * EPOCHS * 8
    rel = [abs(a - b) / abs(b) for a, b in zip(s["losses"], ref["losses"])]
    assert max(rel) < 1e-5, f"per-step losses drift: worst {max(rel):.2e} at step {rel.index(max(rel))}"
    for t, (mine, theirs) in enumerate(zip(s["masks"], ref["masks"])):
        assert set(mine) == set(theirs)
        for name in theirs:
            assert torch.equal(mine[name].cpu(), theirs[name].cpu()), f"task {t}: vital channels of {name} differ"
    assert s["til"] == ref["til"]
    # CIL: the engine's argmax runs over the classes seen so far, the authors' over every output; with the
    # classifier sized to the tasks learned the two coincide once all are seen.
    assert s["cil"][-1] == ref["cil"][-1]
    # the frozen part's BN statistics drifted identically (they decide the eval-mode predictions)
    stats = s["learner"].extractor.statistics()
    for k, v in s["model"].frozen.state_dict().items():
        if k in stats:
            assert torch.allclose(stats[k].float(), v.float(), rtol=1e-4, atol=1e-5), k


def test_state_reopens_faithfully_and_predict_cli_agrees(side_by_side, tmp_path):
    from lightcl.data.datasets import load_dataset
    from lightcl.data.transforms import Preprocess, resize_uint8, to_tensor_uint8
    from lightcl.engine.state import read_state_doc

    s = side_by_side
    learner, export = s["learner"], s["export"]
    state = tmp_path / "state"
    learner.save(state)
    assert read_state_doc(state)["frozen_bn"] == "train"
    with pytest.raises(InputError, match="frozen_bn='train'"):
        LightCL.load(state, load_extractor(export, "ort"))  # the export's fixed statistics are not what was learned
    loaded = LightCL.load(state, load_extractor(export, "torch", frozen_bn="train"))
    x, _ = s["test"][N_TASKS - 1]
    assert torch.equal(loaded.logits(x), learner.logits(x))
    assert torch.equal(loaded.logits(x), learner.logits(x))  # prediction moves nothing

    # lightcl predict reopens it the same way (the torch backend, the saved statistics)
    meta = load_export_meta(export)
    ds = load_dataset("digits", "test")
    known = np.isin(ds.y, list(learner.class_index))
    ds = ds.subset(np.flatnonzero(known))
    xs = resize_uint8(to_tensor_uint8(ds.x), int(meta["input_shape"][-1]))
    pre = Preprocess(meta["normalization"]["mean"], meta["normalization"]["std"])
    mine = torch.cat([learner.predict(pre(xs[i:i + 256])) for i in range(0, len(xs), 256)])
    out = tmp_path / "pred.json"
    r = subprocess.run([sys.executable, "-m", "lightcl", "predict", str(state), "--dataset", "digits",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    assert [p["label"] for p in got["predictions"]] == mine.tolist()
    assert got["accuracy"] == pytest.approx(float((mine == torch.from_numpy(ds.y)).float().mean()))

