"""Bring your own model: graph specs, the fx split, the Python API and CLI intakes, learning on graph exports."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightcl.engine.errors import IntegrityError
from lightcl.engine.graphspec import GraphNet, check_spec, graph_tensors, graph_to_spec
from lightcl.export.intake import IntakeError, export_module, split_module

from tests.byo_models import LongSkip, tiny_resnet

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 40, 32)  # non-square on purpose: nothing may assume 32x32


def _randomise_bn(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 0.2 - 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval()


def _digits_images(n: int = 120, size: int = 48):
    """sklearn digits as uint8 RGB [N, 3, size, size] and labels (the real images of the suite)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = [np.asarray(Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).resize((size, size),
                                                                                               Image.BILINEAR))
            for i in range(n)]
    x = torch.from_numpy(np.stack(imgs)).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(d.target[:n].astype(np.int64))


# ------------------------------------------------------------------------------------------ graph specs
def test_graph_spec_round_trip_is_exact_and_json_only():
    m = _randomise_bn(tiny_resnet(5))
    sp = split_module(m, "stages", "fc", SHAPE)
    x = torch.randn(3, *SHAPE)
    for gm in (sp.frozen, sp.head):
        spec = json.loads(json.dumps(graph_to_spec(gm)))  # JSON through and through
        net = GraphNet(spec)
        net.load_state_dict(graph_tensors(gm, spec), strict=True)
        net.eval()
        with torch.no_grad():
            inp = x if gm is sp.frozen else sp.frozen(x)
            assert torch.equal(net(inp), gm(inp))
    with torch.no_grad():
        assert torch.allclose(sp.head(sp.frozen(x)), m(x), atol=1e-6)
    assert sp.taps == [["tail.0", sp.taps[0][1]], ["tail.1", sp.taps[1][1]]]  # the head's blocks, in order


def _spec():
    return graph_to_spec(split_module(_randomise_bn(tiny_resnet(5)), "stages", "fc", SHAPE).head)


def _crafted(kind: str) -> dict:
    s = _spec()
    nodes, mods = s["nodes"], s["modules"]
    first_mod = next(n for n in nodes if n["op"] == "call_module")
    if kind == "unknown-layer":
        mods[first_mod["target"]]["type"] = "MultiheadAttention"
    elif kind == "unknown-function":
        next(n for n in nodes if n["op"] == "call_function")["target"] = "os.system"
    elif kind == "unknown-method":
        next(n for n in nodes if n["op"] == "call_method")["target"] = "__reduce__"
    elif kind == "cycle":  # a node reading one that comes after it
        first_mod["args"] = [{"node": nodes[-2]["name"]}]
    elif kind == "absurd-conv":
        conv = next(v for v in mods.values() if v["type"] == "Conv2d")
        conv["args"].update(in_channels=60000, out_channels=60000, kernel_size=[60, 60], groups=1)
    elif kind == "code-in-name":
        first_mod["name"] = "x; import os"
    elif kind == "bad-getattr":
        first_mod.update(op="call_function", target="builtins.getattr", args=[{"node": nodes[0]["name"]}, "__class__"],
                         kwargs={})
    elif kind == "bad-args":
        mods[first_mod["target"]]["args"]["stride"] = {"eval": "1"}
    elif kind == "extra-arg":
        mods[first_mod["target"]]["args"]["device"] = "cuda"
    elif kind == "no-output":
        nodes.pop()
    return s


@pytest.mark.parametrize("kind", ["unknown-layer", "unknown-function", "unknown-method", "cycle", "absurd-conv",
                                  "code-in-name", "bad-getattr", "bad-args", "extra-arg", "no-output"])
def test_crafted_spec_refused_in_one_line(kind, tmp_path):
    spec = _crafted(kind)
    with pytest.raises(IntegrityError) as e:
        check_spec(spec)
    assert "\n" not in str(e.value)
    # the same spec inside a frozen.safetensors: load_frozen refuses it as one IntegrityError line
    from safetensors.torch import save_file

    from lightcl.engine.frozen import FROZEN_FORMAT, load_frozen

    p = tmp_path / "frozen.safetensors"
    save_file({"w": torch.zeros(1)}, str(p), metadata={"format": FROZEN_FORMAT, "graph": json.dumps(spec)})
    with pytest.raises(IntegrityError) as e2:
        load_frozen(p)
    assert "\n" not in str(e2.value) and str(p) in str(e2.value)


def test_absurd_spec_refused_without_allocating(monkeypatch):
    spec = _crafted("absurd-conv")
    calls = []
    real = nn.Conv2d.__init__
    monkeypatch.setattr(nn.Conv2d, "__init__", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    with pytest.raises(IntegrityError, match="exceed the limit|must be"):
        GraphNet(spec)
    assert calls == []


# ----------------------------------------------------------------------------------------------- the cut
def test_skip_across_the_cut_and_bad_names_are_one_line_errors():
    with pytest.raises(IntakeError, match=r"skip connection crosses the cut after 'a': tensor 'stem'.*read by 'add'"):
        split_module(LongSkip(), "a", "fc", (3, 16, 16))
    with pytest.raises(IntakeError, match="'nope' is not a module of TinyResNet"):
        split_module(tiny_resnet(), "nope", "fc", SHAPE)
    with pytest.raises(IntakeError, match="--classifier 'stem.0' is a Conv2d"):
        split_module(tiny_resnet(), "stages", "stem.0", SHAPE)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: not traceable
                x = x * 2
            return self.fc(self.a(x).mean((2, 3)))

    with pytest.raises(IntakeError, match="not traceable with torch.fx") as e:
        split_module(Branchy(), "a", "fc", (3, 8, 8))
    assert "\n" not in str(e.value)


# -------------------------------------------------------------------------------- Python API + learning
@pytest.fixture(scope="module")
def byo_export(tmp_path_factory):
    m = _randomise_bn(tiny_resnet(10))
    x, y = _digits_images(96)
    out = tmp_path_factory.mktemp("byo") / "exp"
    meta = export_module(m, out, split="stages", classifier="fc", input_shape=SHAPE, mean=[0.3] * 3, std=[0.4] * 3,
                         images=x, labels=y, int8=True, force=True, progress=False,
                         class_names=[f"digit{i}" for i in range(10)])
    return out, meta, m


def test_export_module_writes_a_normal_export(byo_export):
    out, meta, _ = byo_export
    assert sorted(meta["files"]) == ["frozen.int8.onnx", "frozen.onnx", "frozen.safetensors", "head.safetensors"]
    assert meta["input_shape"] == list(SHAPE) and meta["feature_shape"] == [16, 20, 16]
    assert meta["resize"] == {"rule": "shorter-side-center-crop", "shorter_side": 37}
    assert meta["model"] == {"intake": "module", "arch": None, "factory": None, "split": "stages", "classifier": "fc"}
    assert meta["class_names"][3] == "digit3" and meta["normalization"]["mean"] == [0.3] * 3
    assert meta["parity"]["passed"] and meta["parity"]["torch_rebuild_max_abs_diff"] <= 1e-5
    assert abs(meta["accuracy"]["torch"] - meta["accuracy"]["export"]) <= 0.005
    assert json.loads((out / "meta.json").read_text())["frozen_id"] == meta["frozen_id"]


def test_graph_export_learns_on_ort_and_torch_with_the_same_head(byo_export, tmp_path):
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.head import GraphHead
    from lightcl.engine.learner import LightCL

    out, meta, model = byo_export
    x_raw, y = _digits_images(48)
    from lightcl.export.intake import prepare

    x = prepare(x_raw, SHAPE, meta["resize"], [0.3] * 3, [0.4] * 3)
    feats = {b: load_extractor(out, backend=b)(x) for b in ("ort", "torch", "ort-int8")}
    assert torch.allclose(feats["ort"], feats["torch"], atol=1e-5)
    heads = [load_head(out).eval(), load_head(out).eval()]  # eval: the head has a Dropout
    assert isinstance(heads[0], GraphHead) and heads[0].tap_names() == ["tail.0", "tail.1", "logits"]
    with torch.no_grad():  # identical features -> identical head outputs, and the export's head is the model's
        assert torch.equal(heads[0](feats["torch"]), heads[1](feats["torch"]))
        assert torch.allclose(heads[0](feats["torch"]), model(x), atol=1e-4)
    learners = {}
    for b, head in zip(("ort", "torch"), heads):
        lr = LightCL(load_extractor(out, backend=b), head, num_classes=None, seed=1, buffer_size=8)
        torch.manual_seed(0)  # the head's Dropout draws from torch's global stream: the same masks for both
        for t, classes in enumerate(([0, 1, 2], [3, 4])):
            sel = torch.tensor([int(v) in classes for v in y])
            lr.begin_task(t, classes)
            for _ in range(2):
                r = lr.observe(x[sel], y[sel])
                assert np.isfinite(r["loss"])
            lr.end_task()
        learners[b] = lr
    # both backends trained the same head on (numerically) the same features
    la, lb = learners["ort"].logits(x), learners["torch"].logits(x)
    assert la.shape == (48, 5) and torch.allclose(la, lb, atol=1e-3)
    sel0 = torch.tensor([int(v) in (0, 1, 2) for v in y])
    ev = learners["torch"].evaluate([(0, [(x[sel0], y[sel0])])])
    assert ev is not None
    learners["torch"].save(tmp_path / "s")
    loaded = LightCL.load(tmp_path / "s", load_extractor(out, backend="torch"))
    assert isinstance(loaded.head, GraphHead) and loaded.head.num_classes == 5
    assert torch.equal(loaded.logits(x), learners["torch"].logits(x))


# ----------------------------------------------------------------------------------------------- the CLI
def _png_folder(root: Path, n: int = 100, size: int = 48) -> Path:
    from PIL import Image

    x, y = _digits_images(n, size)
    for i in range(n):
        d = root / f"d{int(y[i])}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(d / f"{i}.png")
    return root


def _lightcl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-m", "lightcl", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_model_factory_export_and_pickle_refused(tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "nets.py").write_text((ROOT / "tests" / "byo_models.py").read_text())
    torch.manual_seed(0)
    model = tiny_resnet(10)
    sd = {"module." + k: v for k, v in model.state_dict().items()}  # DataParallel-style, under "state_dict"
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "w.pth")
    _png_folder(tmp_path / "imgs")
    r = _lightcl("export", "--model", "mypkg.nets:tiny_resnet", "--weights", "w.pth", "--split", "stages.1",
                 "--classifier", "fc", "--input-size", "3,40,32", "--mean", "0.3,0.3,0.3", "--std", "0.4,0.4,0.4",
                 "--images", "imgs", "--out", "EXP", "--profile", "jetson-nano", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "EXP" / "meta.json").read_text())
    assert meta["model"]["factory"] == "mypkg.nets:tiny_resnet" and meta["model"]["intake"] == "module"
    assert meta["class_names"] == [f"d{i}" for i in range(10)] and meta["input_shape"] == [3, 40, 32]
    assert "accuracy on imgs (test split)" in r.stdout

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))

    torch.save({"state_dict": sd, "x": Evil()}, tmp_path / "evil.pth")
    r = _lightcl("export", "--model", "mypkg.nets:tiny_resnet", "--weights", "evil.pth", "--split", "stages",
                 "--classifier", "fc", "--input-size", "40,32", "--mean", "0.3,0.3,0.3", "--std", "0.4,0.4,0.4",
                 "--images", "imgs", "--out", "EXP2", cwd=tmp_path)
    assert r.returncode == 1 and not (tmp_path / "pwned.txt").exists() and not (tmp_path / "EXP2").exists()
    assert "weights_only=True" in r.stderr and "system" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    torch.save({"fc.weight": torch.zeros(10, 32)}, tmp_path / "short.pth")
    r = _lightcl("export", "--model", "mypkg.nets:tiny_resnet", "--weights", "short.pth", "--split", "stages",
                 "--classifier", "fc", "--input-size", "40,32", "--mean", "0.3,0.3,0.3", "--std", "0.4,0.4,0.4",
                 "--images", "imgs", "--out", "EXP2", cwd=tmp_path)
    assert r.returncode == 1 and "missing stem.0.weight" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ torchvision-keyed ResNet-18
def _torchvision_models():
    try:
        from lightcl.export import torchvision_models
    except ImportError:
        pytest.skip("lightcl.export.torchvision_models (helper B's branch) is not merged yet")
    return torchvision_models


def test_torchvision_resnet18_trained_at_64_exports_with_one_command_and_keeps_its_accuracy(tmp_path):
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL
    from lightcl.export.intake import prepare

    tv = _torchvision_models()
    torch.manual_seed(0)
    model = tv.create_torchvision_model("tv_resnet18", num_classes=10)
    x_raw, y = _digits_images(160, 64)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x = prepare(x_raw, (3, 64, 64), {"rule": "stretch"}, mean, std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(5):  # a few steps at 64x64: the weights are trained, not random
        idx = torch.arange(step * 32, step * 32 + 32) % 160
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    for m in model.modules():  # BN statistics of the trained weights (5 momentum updates would leave them at init)
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for i in range(0, 160, 32):
            model(x[i:i + 32])
    model.eval()
    torch.save(model.state_dict(), tmp_path / "my_resnet18.pth")  # torchvision's own keys
    _png_folder(tmp_path / "imgs", n=160, size=64)
    r = _lightcl("export", "my_resnet18.pth", "--arch", "tv_resnet18", "--input-size", "64", "--resize", "stretch",
                 "--images", "imgs", "--out", "EXP", "--profile", "jetson-nano", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "EXP" / "meta.json").read_text())
    assert meta["input_shape"] == [3, 64, 64] and meta["feature_shape"] == [256, 4, 4]
    assert meta["model"]["intake"] == "torchvision" and meta["model"]["arch"] == "tv_resnet18"
    assert meta["model"]["split"] == "layer3" and meta["model"]["classifier"] == "fc"
    assert meta["normalization"]["mean"] == mean and meta["resize"] == {"rule": "stretch"}
    acc = meta["accuracy"]
    assert acc["labels"].startswith("folder order") and abs(acc["torch"] - acc["export"]) <= 0.005, acc
    assert acc["torch"] > 0.3, acc  # trained: far above chance (0.1)
    # the export learns a lesson on the torch backend with block taps layer4.0, layer4.1
    head = load_head(tmp_path / "EXP")
    assert head.tap_names() == ["layer4.0", "layer4.1", "logits"]
    cl = LightCL(load_extractor(tmp_path / "EXP", backend="torch"), head, num_classes=None, buffer_size=4)
    sel = y < 2
    cl.begin_task(0, [0, 1])
    cl.observe(x[sel][:16], y[sel][:16])
    cl.end_task()
    assert cl.logits(x[:4]).shape == (4, 2)


def test_checkpoint_exports_at_its_own_input_size(digits_ckpt, tmp_path):
    """A lightcl checkpoint recorded at 48x48 exports at 48x48 (parity and calibration images included); it
    used to end in an onnxruntime traceback (`Got: 32 Expected: 48`)."""
    import shutil

    from lightcl.export.checkpoint import checkpoint_paths
    from lightcl.export.onnx_export import export_checkpoint

    st, js = checkpoint_paths(digits_ckpt)
    shutil.copy(st, tmp_path / "c48.safetensors")
    meta = json.loads(js.read_text())
    meta["input_size"] = [3, 48, 48]
    (tmp_path / "c48.json").write_text(json.dumps(meta))
    out = export_checkpoint(tmp_path / "c48", tmp_path / "exp", profile="jetson-nano", int8=True, calib_size=16,
                            force=True, progress=False)
    assert out["input_shape"] == [3, 48, 48] and out["feature_shape"][1:] == [12, 12]
    assert out["parity"]["passed"] and out["resize"] == {"rule": "stretch"}
    assert out["model"] == {"intake": "checkpoint", "arch": "resnet18", "factory": None, "split": "layer3",
                            "classifier": "fc"}


class _TimmLinear(torch.nn.Linear):
    """timm's ``Linear``: an nn.Linear subclass whose forward is F.linear (fx traces into a subclass)."""

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight, self.bias)


class _NotLinear(torch.nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_a_linear_subclass_classifier_is_taken_and_a_non_linear_one_refused():
    m = _randomise_bn(tiny_resnet(5))
    m.fc = _TimmLinear(m.fc.in_features, 5)
    sp = split_module(m, "stages", "fc", SHAPE)
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(sp.head(sp.frozen(x)), m.eval()(x), atol=1e-5)
    assert type(sp.head.get_submodule("fc")) is torch.nn.Linear
    m.fc = _NotLinear(m.fc.in_features, 5)
    with pytest.raises(IntakeError, match="differs from model"):
        split_module(m, "stages", "fc", SHAPE)
