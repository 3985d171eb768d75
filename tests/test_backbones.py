"""Every registered backbone, driven by the registries (no test names an architecture it special-cases):
split composition at every split point, taps as the blocks declare them, block specs that round-trip,
export with onnxruntime parity on real images, the learner training and reloading, and the CLI end to end
for the second family (MobileNetV2)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lightcl.engine.blocks import BLOCK_TYPES, Block, block_tap_names, build_block
from lightcl.export.zoo import backbone_entry, create_backbone, list_backbones, split_backbone, split_points

ARCHS = list_backbones()


def _with_bn_statistics(arch: str, seed: int = 0):
    """A width-16 model whose BN statistics are not the identity, so a wrong train/eval mode would show."""
    torch.manual_seed(seed)
    m = create_backbone(arch, num_classes=10, width=16)
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.randn(8, *m.input_size))
    return m.eval()


def test_registry_has_a_second_family_and_entries_are_consistent():
    assert {"resnet18", "mobilenetv2"} <= set(ARCHS)
    for arch in ARCHS:
        e = backbone_entry(arch)
        cfg = e.default_cfg()
        m = create_backbone(arch, width=16)
        assert tuple(m.input_size) == tuple(cfg["input_size"]) == e.input_size
        assert cfg["default_split"] in cfg["split_points"] == split_points(m)
        assert create_backbone(arch).width == e.default_width
    with pytest.raises(ValueError, match="unknown arch"):
        backbone_entry("nope")


def test_entry_split_points_leave_the_random_stream_alone():
    e = backbone_entry(ARCHS[-1])
    e._points.clear()
    torch.manual_seed(3)
    a = torch.rand(1)
    torch.manual_seed(3)
    assert e.split_points  # builds a model once
    assert torch.equal(torch.rand(1), a)


@pytest.mark.parametrize("arch", ARCHS)
def test_split_at_every_point_composes_to_the_whole_model(arch):
    m = _with_bn_statistics(arch)
    x = torch.randn(3, *m.input_size)
    with torch.no_grad():
        want = m(x)
    for split in split_points(m):
        frozen, head = split_backbone(m, split)
        head.eval()
        with torch.no_grad():
            f = frozen(x)
            got = head(f)
        assert (got - want).abs().max().item() <= 1e-5, (arch, split)
        assert list(f.shape[1:]) == head.config["in_features"]
        assert not any(p.requires_grad for p in frozen.parameters())
    _, head = split_backbone(m)  # no split named: the entry's default
    assert head.config["split"] == backbone_entry(arch).split


@pytest.mark.parametrize("arch", ARCHS)
def test_taps_are_named_per_block_declaration(arch):
    m = _with_bn_statistics(arch)
    _, head = split_backbone(m)
    head.eval()
    want = []
    for name, block in zip(head.block_names, head.blocks):
        assert isinstance(block, Block)
        want += [f"{name}.{s}" for s in block.tap_suffixes()] + [name]
    assert head.tap_names() == want + ["logits"]
    assert head.tap_names()[:len(block_tap_names(head.block_names[0], head.blocks[0]))] == \
        block_tap_names(head.block_names[0], head.blocks[0])
    f = torch.randn(2, *head.in_features)
    with torch.no_grad():
        logits, taps = head(f, return_taps=True)
        assert list(taps) == head.tap_names()
        assert torch.equal(logits, head(f))  # taps change no number
        x = f
        for name, block in zip(head.block_names, head.blocks):
            out, inner = block.forward_taps(x)
            assert torch.equal(out, block(x)) and torch.equal(out, taps[name])
            for s in block.tap_suffixes():
                assert torch.equal(inner[s], taps[f"{name}.{s}"])
            x = out


def test_every_registered_block_type_round_trips_through_its_spec():
    """Each registered type must appear in some registered backbone (else this test cannot check it) and
    rebuild from its spec to the same module: same spec, same state keys, same outputs."""
    seen = {}
    for arch in ARCHS:
        m = create_backbone(arch, width=16).eval()
        x = torch.randn(2, *m.input_size)
        with torch.no_grad():
            for name, b in zip(m.block_names, m.blocks):
                seen.setdefault(b.block_type, (b, x))
                x = b(x)
    assert set(seen) == set(BLOCK_TYPES), f"block types no backbone uses: {set(BLOCK_TYPES) - set(seen)}"
    for kind, (b, x) in seen.items():
        spec = b.spec()
        assert spec["type"] == kind and BLOCK_TYPES[kind] is type(b)
        b2 = build_block(dict(spec, name="x"))  # the loaders pass specs with their names
        assert b2.spec() == spec
        b2.load_state_dict(b.state_dict(), strict=True)
        with torch.no_grad():
            assert torch.equal(b2.eval()(x), b(x))
    with pytest.raises(ValueError, match="unknown block type 'nope'; known: "):
        build_block({"type": "nope"})


def test_pruning_refusal_follows_the_block_capability():
    from lightcl.export.prune import PruneError, prune_backbone

    for arch in ARCHS:
        m = create_backbone(arch, width=16).eval()
        if all(b.prunable for b in m.blocks):
            pruned, rep = prune_backbone(m, 0.5)
            assert rep["weight_sparsity"] >= 0.5
        else:
            with pytest.raises(PruneError, match="pruning supports residual basic blocks only"):
                prune_backbone(m, 0.5)


def test_scenarios_name_their_backbone():
    from lightcl.bench.pipeline import backbone_path
    from lightcl.bench.scenarios import SCENARIOS, Scenario, get_scenario
    from lightcl.engine.errors import InputError

    for s in SCENARIOS.values():
        assert s.split in backbone_entry(s.arch).split_points
        assert f"-{s.arch}-w{s.width}-" in backbone_path(s).name
    assert {s.arch for s in SCENARIOS.values()} >= {"resnet18", "mobilenetv2"}
    other = get_scenario("smoke", arch="mobilenetv2")
    assert other.split == backbone_entry("mobilenetv2").split
    old = dict(SCENARIOS["smoke"].to_dict())
    del old["arch"]  # a results.json written before scenarios had an arch
    assert Scenario(**old) == SCENARIOS["smoke"]
    with pytest.raises(InputError, match="unknown split point"):
        Scenario(**dict(old, split="stage5"))


@pytest.fixture(scope="module", params=ARCHS)
def tiny_export(request, tmp_path_factory):
    """A real (tiny) pretraining on digits (1 epoch on 200 images) and the export at the default split."""
    from lightcl.export.onnx_export import export_checkpoint
    from lightcl.export.pretrain import pretrain

    arch = request.param
    d = tmp_path_factory.mktemp(f"bb-{arch}")
    pretrain("digits", d / "ckpt", arch=arch, width=16, epochs=1, subset=200, seed=0, progress=False)
    meta = export_checkpoint(d / "ckpt", d / "export", progress=False)
    return arch, d / "export", meta


def test_export_parity_with_onnxruntime(tiny_export):
    arch, out, meta = tiny_export
    assert meta["arch"] == arch and meta["split"] == backbone_entry(arch).split
    assert meta["parity"]["passed"] and meta["parity"]["max_abs_diff"] <= 1e-4
    assert meta["input_shape"] == list(backbone_entry(arch).input_size)
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.frozen import load_frozen

    ort = load_extractor(out, backend="ort")
    frozen, _ = load_frozen(out / "frozen.safetensors")
    x = torch.randn(4, *meta["input_shape"])
    with torch.no_grad():
        assert (ort(x) - frozen(x)).abs().max().item() <= 1e-4


def test_learner_trains_and_round_trips(tiny_export, tmp_path):
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL

    arch, out, meta = tiny_export
    ext = load_extractor(out, backend="ort")
    learner = LightCL(ext, load_head(out), num_classes=4, seed=0)
    g = torch.Generator().manual_seed(0)
    for task, classes in enumerate([[0, 1], [2, 3]]):
        learner.begin_task(task, classes)
        for _ in range(2):
            x = torch.randn(16, *meta["input_shape"], generator=g)
            y = torch.tensor([classes[i % 2] for i in range(16)])
            res = learner.observe(x, y)
            assert res["loss"] == res["loss"]  # finite, not NaN
        learner.end_task()
    assert set(learner.memory.masks) == set(learner.head.tap_names()) - {"logits"}
    learner.save(tmp_path / "state")
    again = LightCL.load(tmp_path / "state", ext)
    x = torch.randn(5, *meta["input_shape"], generator=g)
    assert torch.equal(again.logits(x), learner.logits(x))


def _cli(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "lightcl", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


@pytest.mark.benchmark
def test_cli_pretrain_export_learn_mobilenetv2(tmp_path):
    """The second family through the CLI with no special case: pretrain, export (legacy exporter, int8),
    learn one task. ~25 s of CPU, so it runs with the benchmarks."""
    r = _cli("pretrain", "--dataset", "digits", "--arch", "mobilenetv2", "--width", "16", "--epochs", "1",
             "--subset", "200", "--out", "ck/mb16", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _cli("export", "ck/mb16", "--out", "exp", "--profile", "jetson-nano", "--int8", "--calib-size", "32",
             "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "split stage5" in r.stdout
    r = _cli("learn", "exp", "--scenario", "smoke", "--state", "st", "--max-tasks", "1", "--epochs", "1", "--quiet",
             "--backend", "ort-int8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "final TIL" in r.stdout
    r = _cli("export", "ck/mb16", "--out", "exp2", "--sparsity", "0.5", cwd=tmp_path)
    assert r.returncode != 0 and "pruning supports residual basic blocks only" in r.stderr
    assert not (tmp_path / "exp2").exists()


def test_info_lists_every_registered_backbone_with_its_default_config():
    from lightcl.commands.info import _backbones
    from lightcl.export.zoo import backbone_entry, list_backbones

    got = _backbones()
    assert sorted(got) == list_backbones()
    for name, cfg in got.items():
        assert cfg["default_split"] == backbone_entry(name).split and cfg["default_split"] in cfg["split_points"]
