"""Structured pruning at export time: dependency handling, the authors' ratios, specs, exports, bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lightcl.engine.blocks import BasicBlock, build_block
from lightcl.engine.frozen import load_frozen
from lightcl.engine.head import Head
from lightcl.export.prune import PruneError, parse_sparsity, plan_pruning, prune_backbone
from lightcl.export.zoo import create_backbone, split_backbone


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lightcl", *args], capture_output=True, text=True, timeout=timeout)


def _random_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so a channel mix-up cannot hide."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@torch.no_grad()
def _masked_dense(model, plan):
    """The dense model with every removed channel silenced at each producer (conv filter and BN affine
    zeroed): a removed channel is then 0 everywhere, so it must compute exactly what the pruned model does."""
    import copy

    dense = copy.deepcopy(model)
    sd = dense.state_dict()
    for g, keep in zip(plan["groups"], plan["keep_idx"]):
        drop = torch.ones(g.size, dtype=torch.bool)
        drop[keep] = False
        for conv, bn in g.producers:
            sd[f"{conv}.weight"][drop] = 0
            sd[f"{bn}.weight"][drop] = 0
            sd[f"{bn}.bias"][drop] = 0
    dense.load_state_dict(sd)
    return dense.eval()


@pytest.mark.parametrize("sparsity", ["authors", 0.5, 0.9])
def test_pruned_model_equals_masked_dense_model(sparsity):
    torch.manual_seed(0)
    model = create_backbone("resnet18", width=16).eval()
    _random_bn(model)
    plan = plan_pruning(model, sparsity)
    pruned, rep = prune_backbone(model, sparsity)
    x = torch.randn(4, 3, 32, 32)
    ref = _masked_dense(model, plan)(x)
    assert torch.allclose(pruned(x), ref, atol=1e-5), (pruned(x) - ref).abs().max()
    # every tensor is physically smaller, nothing is masked
    n_dense = sum(p.numel() for p in model.parameters())
    assert rep["params_kept"] == sum(p.numel() for p in pruned.parameters()) < n_dense
    # the split still composes: head(frozen(x)) == pruned(x)
    frozen, head = split_backbone(pruned, "layer3")
    assert torch.allclose(head.eval()(frozen(x)), pruned(x), atol=1e-5)


def test_residual_groups_share_channels_and_blocks_carry_their_widths():
    model = create_backbone("resnet18", width=64)
    pruned, rep = prune_backbone(model, "authors")
    # authors' count: int(C * (1 - r) + 0.5) + 1 (their kthvalue threshold keeps one more)
    assert rep["groups"]["stem+layer1.0+layer1.1"] == [52, 64]
    assert rep["groups"]["layer3.0+layer3.1"] == [78, 256]
    assert rep["groups"]["layer4.0+layer4.1"] == [103, 512]
    assert rep["groups"]["layer3.0.mid"] == [78, 256]
    # the paper's "sparsity 0.9"
    assert 0.88 <= rep["weight_sparsity"] <= 0.92, rep["weight_sparsity"]
    blocks = dict(zip(pruned.block_names, pruned.blocks))
    assert blocks["layer1.1"].shortcut_kind == "identity" and blocks["layer1.1"].cin == blocks["layer1.1"].cout == 52
    assert blocks["layer3.0"].shortcut[0].weight.shape == (78, 103, 1, 1)
    assert pruned.fc.weight.shape == (10, 103)


def test_numeric_sparsity_reaches_its_target_with_l1_importance():
    torch.manual_seed(0)
    model = create_backbone("resnet18", width=16)
    for s in (0.3, 0.75):
        rep = prune_backbone(model, s)[1]
        assert s <= rep["weight_sparsity"] <= s + 0.03, rep
        assert rep["mode"] == "global-l1"
    # L1: the strongest filter of the (stand-alone) mid group of layer2.0 survives, the weakest does not
    plan = plan_pruning(model, 0.5)
    gi = next(i for i, g in enumerate(plan["groups"]) if g.name == "layer2.0.mid")
    w = model.state_dict()[f"{plan['groups'][gi].producers[0][0]}.weight"].abs().sum(dim=(1, 2, 3))
    keep = set(plan["keep_idx"][gi].tolist())
    assert int(w.argmax()) in keep and int(w.argmin()) not in keep


def test_block_specs_old_and_new():
    # an old dense spec (no mid/shortcut keys) still builds, and a dense block writes the same spec back
    old = {"type": "basic", "cin": 16, "cout": 32, "stride": 2}
    assert build_block(old).spec() == old
    b = build_block({"type": "basic", "cin": 8, "cout": 8, "stride": 1, "mid": 3, "shortcut": "conv"})
    assert b.conv1.weight.shape == (3, 8, 3, 3) and len(b.shortcut) == 2
    assert build_block(b.spec()).spec() == b.spec()
    with pytest.raises(ValueError, match="identity"):
        BasicBlock(8, 16, 1, shortcut="identity")
    with pytest.raises(ValueError, match="at least one channel"):
        BasicBlock(8, 8, 1, mid=0)


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "-0.2", "nan", "lots", 0, 1.0, True])
def test_bad_sparsity_values(bad):
    with pytest.raises(PruneError, match="--sparsity"):
        parse_sparsity(bad)


def test_sparsity_that_empties_a_layer_is_refused():
    with pytest.raises(PruneError, match="every channel"):
        plan_pruning(create_backbone("resnet18", width=16), 0.99999)


# ------------------------------------------------------------------------ exports (width 16, digits)
@pytest.fixture(scope="module")
def pruned_export(digits_ckpt, tmp_path_factory):
    from lightcl.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("pruned") / "digits16-authors"
    meta = export_checkpoint(digits_ckpt, out, split="layer3", progress=False, sparsity="authors", recover_epochs=0)
    return out, meta


def test_pruned_export_is_smaller_and_passes_parity(pruned_export, digits_export):
    out, meta = pruned_export
    assert meta["parity"]["passed"] and meta["parity"]["torch_rebuild_max_abs_diff"] == 0.0
    assert meta["sparsity"]["mode"] == "authors" and meta["sparsity"]["recovery"]["epochs"] == 0
    for name in ("frozen.onnx", "frozen.safetensors", "head.safetensors"):
        assert (out / name).stat().st_size < 0.6 * (digits_export / name).stat().st_size, name
    net, fmeta = load_frozen(out / "frozen.safetensors")
    assert fmeta["blocks"][-1]["cout"] == meta["feature_shape"][0] < 64
    head = Head.load(out / "head.safetensors")
    assert head.in_features == tuple(meta["feature_shape"]) and head.fc.in_features < 128


def test_engine_learns_on_pruned_export_and_refuses_mixed_states(pruned_export, digits_export, tmp_path):
    out, _ = pruned_export
    res = tmp_path / "r.json"
    r = _cli("learn", str(out), "--scenario", "smoke", "--backend", "ort", "--epochs", "2", "--max-tasks", "2",
             "--state", str(tmp_path / "s"), "--json", str(res), "--quiet")
    assert r.returncode == 0, r.stderr
    til = json.loads(res.read_text())["til"]
    assert til[-1][0] > 0.6 and til[-1][1] > 0.6, til  # learned both tasks well above chance (0.5)
    # a state learned on the pruned export against the dense one (and the reverse): one line, non-zero exit
    r = _cli("learn", str(digits_export), "--scenario", "smoke", "--state", str(tmp_path / "s"), "--resume", "--quiet")
    assert r.returncode != 0 and "frozen part" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = _cli("learn", str(digits_export), "--scenario", "smoke", "--backend", "ort", "--epochs", "1",
             "--max-tasks", "1", "--state", str(tmp_path / "d"), "--quiet")
    assert r.returncode == 0, r.stderr
    r = _cli("learn", str(out), "--scenario", "smoke", "--state", str(tmp_path / "d"), "--resume", "--quiet")
    assert r.returncode != 0 and "frozen part" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_bad_sparsity_writes_nothing(digits_ckpt, tmp_path):
    out = tmp_path / "x"
    r = _cli("export", str(digits_ckpt), "--out", str(out), "--sparsity", "1.5")
    assert r.returncode != 0 and not out.exists()
    assert len(r.stderr.strip().splitlines()) == 1 and "--sparsity" in r.stderr, r.stderr
    r = _cli("export", str(digits_ckpt), "--out", str(out), "--sparsity", "0.99999", "--quiet")
    assert r.returncode != 0 and not out.exists() and "every channel" in r.stderr, r.stderr
