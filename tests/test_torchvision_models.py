"""The torchvision-keyed families (lightcl.export.torchvision_models) against torchvision's own definitions.

torchvision does not import here, so the reference is restated in this file, independently of the module under
test, from torchvision's source (pytorch/vision: models/resnet.py @ f50e776b, models/mobilenetv2.py @ 9173b13b,
models/mobilenetv3.py @ 2f7f5581, ops/misc.py):

* the state-dict key set with every shape, generated here from torchvision's stage tables, must equal the
  model's exactly (the keys are what ``load_state_dict(strict=True)`` of a torchvision checkpoint checks);
  parameter counts are the ``num_params`` of torchvision's weight metas / model docs;
* the forward of ``tv_resnet18`` and ``tv_mobilenet_v3_small`` equals a restatement written with
  ``torch.nn.functional`` calls straight from the state dict (random BN statistics, so eps and the order matter);
* ``torch.fx.symbolic_trace`` works and gives the same output; the legacy ONNX export runs in onnxruntime;
* ``num_classes`` changes only the classifier.
"""
from __future__ import annotations

import hashlib
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightcl.engine.errors import InputError
from lightcl.export.torchvision_models import (create_torchvision_model, list_torchvision_models, split_points,
                                               torchvision_entry)

Shape = Tuple[int, ...]
NAMES = ["tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_mobilenet_v2", "tv_mobilenet_v3_small",
         "tv_mobilenet_v3_large"]

# ---------------------------------------------------------------------------------- reference key sets (restated)


def _conv(keys: Dict[str, Shape], name: str, cout: int, cin_per_group: int, k: int, bias: bool = False) -> None:
    keys[f"{name}.weight"] = (cout, cin_per_group, k, k)
    if bias:
        keys[f"{name}.bias"] = (cout,)


def _bn(keys: Dict[str, Shape], name: str, c: int) -> None:
    for p in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{name}.{p}"] = (c,)
    keys[f"{name}.num_batches_tracked"] = ()


def _linear(keys: Dict[str, Shape], name: str, cout: int, cin: int) -> None:
    keys[f"{name}.weight"] = (cout, cin)
    keys[f"{name}.bias"] = (cout,)


def ref_resnet_keys(blocks: List[int], bottleneck: bool, num_classes: int = 1000) -> Dict[str, Shape]:
    keys: Dict[str, Shape] = {}
    _conv(keys, "conv1", 64, 3, 7)
    _bn(keys, "bn1", 64)
    cin, exp = 64, 4 if bottleneck else 1
    for s, (planes, n) in enumerate(zip([64, 128, 256, 512], blocks), start=1):
        for j in range(n):
            b = f"layer{s}.{j}"
            if bottleneck:
                _conv(keys, f"{b}.conv1", planes, cin, 1), _bn(keys, f"{b}.bn1", planes)
                _conv(keys, f"{b}.conv2", planes, planes, 3), _bn(keys, f"{b}.bn2", planes)
                _conv(keys, f"{b}.conv3", planes * 4, planes, 1), _bn(keys, f"{b}.bn3", planes * 4)
            else:
                _conv(keys, f"{b}.conv1", planes, cin, 3), _bn(keys, f"{b}.bn1", planes)
                _conv(keys, f"{b}.conv2", planes, planes, 3), _bn(keys, f"{b}.bn2", planes)
            if j == 0 and (s > 1 or cin != planes * exp):
                _conv(keys, f"{b}.downsample.0", planes * exp, cin, 1), _bn(keys, f"{b}.downsample.1", planes * exp)
            cin = planes * exp
    _linear(keys, "fc", num_classes, 512 * exp)
    return keys


def ref_mobilenet_v2_keys(num_classes: int = 1000) -> Dict[str, Shape]:
    keys: Dict[str, Shape] = {}
    _conv(keys, "features.0.0", 32, 3, 3), _bn(keys, "features.0.1", 32)
    i, cin = 1, 32
    for t, c, n, _s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                        (6, 320, 1, 1)]:
        for _ in range(n):
            f, hid, j = f"features.{i}.conv", cin * t, 0
            if t != 1:
                _conv(keys, f"{f}.0.0", hid, cin, 1), _bn(keys, f"{f}.0.1", hid)
                j = 1
            _conv(keys, f"{f}.{j}.0", hid, 1, 3), _bn(keys, f"{f}.{j}.1", hid)
            _conv(keys, f"{f}.{j + 1}", c, hid, 1), _bn(keys, f"{f}.{j + 2}", c)
            i, cin = i + 1, c
    _conv(keys, f"features.{i}.0", 1280, 320, 1), _bn(keys, f"features.{i}.1", 1280)
    _linear(keys, "classifier.1", num_classes, 1280)
    return keys


def _divisible8(v: float) -> int:
    new = max(8, int(v + 4) // 8 * 8)
    return new + 8 if new < 0.9 * v else new


# (input, kernel, expanded, out, SE, activation, stride): Tables 1/2 of the MobileNetV3 paper as torchvision has them
V3_SMALL = [(16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
            (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
            (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
            (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1)]
V3_LARGE = [(16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
            (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
            (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
            (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
            (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1)]


def ref_mobilenet_v3_keys(table, last_channel: int, num_classes: int = 1000) -> Dict[str, Shape]:
    keys: Dict[str, Shape] = {}
    _conv(keys, "features.0.0", 16, 3, 3), _bn(keys, "features.0.1", 16)
    for i, (cin, k, exp, cout, se, _act, _s) in enumerate(table, start=1):
        b, j = f"features.{i}.block", 0
        if exp != cin:
            _conv(keys, f"{b}.0.0", exp, cin, 1), _bn(keys, f"{b}.0.1", exp)
            j = 1
        _conv(keys, f"{b}.{j}.0", exp, 1, k), _bn(keys, f"{b}.{j}.1", exp)
        j += 1
        if se:
            sq = _divisible8(exp // 4)
            _conv(keys, f"{b}.{j}.fc1", sq, exp, 1, bias=True), _conv(keys, f"{b}.{j}.fc2", exp, sq, 1, bias=True)
            j += 1
        _conv(keys, f"{b}.{j}.0", cout, exp, 1), _bn(keys, f"{b}.{j}.1", cout)
    n, last = len(table) + 1, table[-1][3]
    _conv(keys, f"features.{n}.0", 6 * last, last, 1), _bn(keys, f"features.{n}.1", 6 * last)
    _linear(keys, "classifier.0", last_channel, 6 * last)
    _linear(keys, "classifier.3", num_classes, last_channel)
    return keys


REFERENCE = {
    "tv_resnet18": lambda k=1000: ref_resnet_keys([2, 2, 2, 2], False, k),
    "tv_resnet34": lambda k=1000: ref_resnet_keys([3, 4, 6, 3], False, k),
    "tv_resnet50": lambda k=1000: ref_resnet_keys([3, 4, 6, 3], True, k),
    "tv_mobilenet_v2": ref_mobilenet_v2_keys,
    "tv_mobilenet_v3_small": lambda k=1000: ref_mobilenet_v3_keys(V3_SMALL, 1024, k),
    "tv_mobilenet_v3_large": lambda k=1000: ref_mobilenet_v3_keys(V3_LARGE, 1280, k),
}
# num_params of torchvision's weight metas (the same figures torchvision's model docs list)
NUM_PARAMS = {"tv_resnet18": 11689512, "tv_resnet34": 21797672, "tv_resnet50": 25557032,
              "tv_mobilenet_v2": 3504872, "tv_mobilenet_v3_small": 2542856, "tv_mobilenet_v3_large": 5483032}
# len(state_dict()) (parameters + BN buffers) and sha256 of the sorted "key shape" lines
KEY_COUNTS = {"tv_resnet18": 122, "tv_resnet34": 218, "tv_resnet50": 320, "tv_mobilenet_v2": 314,
              "tv_mobilenet_v3_small": 244, "tv_mobilenet_v3_large": 312}
KEY_SHA256 = {
    "tv_resnet18": "5191d63ec398959223d67ef37376f9061e6965b859fc2d4e40e23d037147a0d7",
    "tv_resnet34": "f8de2a1812ef85e46b3f60c61589921afee0c2a6d4165e27508ad215f101671b",
    "tv_resnet50": "a87e91cd6bd1f939e0b723852e567a7205d33b0ac984ac02dd1a5f225d37c036",
    "tv_mobilenet_v2": "e3eb10f890f74c6ee65e79c53b1a3c9ee5dd5c8d8eb4ec3185d92cbea9d47b89",
    "tv_mobilenet_v3_small": "8fee267f118ca2d792c601972a6569784230d072ae8bdc09f798603f30decf4f",
    "tv_mobilenet_v3_large": "555a3f5e3bcc126ea392ac52ab422c6a68f733ea2a9046dbf0f1b191dd1a09af",
}


def _key_lines(keys: Dict[str, Shape]) -> str:
    return "\n".join(f"{k} {tuple(v)}" for k, v in sorted(keys.items()))


@pytest.fixture(scope="module")
def models() -> Dict[str, nn.Module]:
    torch.manual_seed(0)
    return {n: create_torchvision_model(n).eval() for n in NAMES}


def test_registry_lists_the_contract_names():
    assert set(NAMES) <= set(list_torchvision_models())
    with pytest.raises(InputError, match="unknown torchvision model 'resnet18'; known: tv_mobilenet_v2"):
        torchvision_entry("resnet18")
    with pytest.raises(InputError, match="num_classes"):
        create_torchvision_model("tv_resnet18", num_classes=0)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_are_torchvisions(models, name):
    sd = models[name].state_dict()
    got = {k: tuple(v.shape) for k, v in sd.items()}
    want = REFERENCE[name]()
    assert sorted(set(got) ^ set(want)) == [], "keys differ from torchvision's"
    assert got == want
    assert len(sd) == KEY_COUNTS[name]
    assert hashlib.sha256(_key_lines(got).encode()).hexdigest() == KEY_SHA256[name]
    assert sum(p.numel() for p in models[name].parameters()) == NUM_PARAMS[name]
    # a checkpoint with exactly these keys loads strictly (a fresh model with other random weights)
    other = create_torchvision_model(name)
    other.load_state_dict(sd, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), sd.values()))


def test_spot_check_keys(models):
    assert models["tv_resnet18"].state_dict()["layer1.0.conv1.weight"].shape == (64, 64, 3, 3)
    assert models["tv_resnet18"].state_dict()["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert models["tv_resnet50"].state_dict()["layer4.2.bn3.running_var"].shape == (2048,)
    assert models["tv_mobilenet_v2"].state_dict()["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)
    assert models["tv_mobilenet_v2"].state_dict()["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert models["tv_mobilenet_v3_small"].state_dict()["features.1.block.1.fc1.weight"].shape == (8, 16, 1, 1)
    assert models["tv_mobilenet_v3_small"].state_dict()["classifier.3.weight"].shape == (1000, 1024)
    assert models["tv_mobilenet_v3_large"].state_dict()["classifier.0.weight"].shape == (1280, 960)


def test_hyper_parameters_invisible_in_keys(models):
    """BN eps/momentum and dropout do not show in the keys: checked on the modules."""
    for name in ("tv_mobilenet_v3_small", "tv_mobilenet_v3_large"):
        bns = [m for m in models[name].modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
        assert isinstance(models[name].classifier[1], nn.Hardswish)
        assert models[name].classifier[2].p == 0.2
    for name in ("tv_resnet18", "tv_mobilenet_v2"):
        assert all(m.eps == 1e-5 and m.momentum == 0.1 for m in models[name].modules()
                   if isinstance(m, nn.BatchNorm2d))
    assert models["tv_mobilenet_v2"].classifier[0].p == 0.2
    assert isinstance(models["tv_mobilenet_v2"].features[1].conv[0][2], nn.ReLU6)
    assert isinstance(models["tv_resnet18"].maxpool, nn.MaxPool2d)
    # strides (not in the keys): ResNet-50 v1.5 strides in the 3x3 conv; MobileNets in the depthwise conv
    r50 = models["tv_resnet50"].layer2[0]
    assert (r50.conv1.stride, r50.conv2.stride, r50.downsample[0].stride) == ((1, 1), (2, 2), (2, 2))
    assert models["tv_mobilenet_v2"].features[2].conv[1][0].stride == (2, 2)
    assert models["tv_mobilenet_v3_large"].features[13].block[1][0].stride == (2, 2)


# ------------------------------------------------------------------------------ functional restatement of forward


def _randomise(model: nn.Module, seed: int) -> Dict[str, torch.Tensor]:
    """Random BN affine and statistics (small variances make eps matter), random biases; weights keep their init."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) * 0.95 + 0.05)
        elif k.endswith("running_mean") or k.endswith("bias"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif k.endswith("weight") and v.dim() == 1:
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith("weight") and v.dim() == 2:
            v.copy_(torch.randn(v.shape, generator=g) * 0.05)
    model.load_state_dict(sd)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _bn_f(x, sd, p, eps=1e-5):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        training=False, eps=eps)


def ref_resnet18_forward(x: torch.Tensor, sd: Dict[str, torch.Tensor]) -> torch.Tensor:
    x = F.relu(_bn_f(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for s in range(1, 5):
        for j in range(2):
            b, stride = f"layer{s}.{j}", 2 if (s > 1 and j == 0) else 1
            out = F.relu(_bn_f(F.conv2d(x, sd[b + ".conv1.weight"], stride=stride, padding=1), sd, b + ".bn1"))
            out = _bn_f(F.conv2d(out, sd[b + ".conv2.weight"], padding=1), sd, b + ".bn2")
            idt = x
            if b + ".downsample.0.weight" in sd:
                idt = _bn_f(F.conv2d(x, sd[b + ".downsample.0.weight"], stride=stride), sd, b + ".downsample.1")
            x = F.relu(out + idt)
    x = x.mean(dim=(2, 3))
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


def ref_mobilenet_v3_small_forward(x: torch.Tensor, sd: Dict[str, torch.Tensor]) -> torch.Tensor:
    eps = 1e-3

    def cba(x, p, stride=1, groups=1, act=None):
        w = sd[p + ".0.weight"]
        x = _bn_f(F.conv2d(x, w, stride=stride, padding=(w.shape[-1] - 1) // 2, groups=groups), sd, p + ".1", eps)
        return act(x) if act is not None else x

    x = cba(x, "features.0", stride=2, act=F.hardswish)
    for i, (cin, _k, exp, cout, se, a, s) in enumerate(V3_SMALL, start=1):
        act = F.hardswish if a == "HS" else F.relu
        b, j, y = f"features.{i}.block", 0, x
        if exp != cin:
            y, j = cba(y, f"{b}.0", act=act), 1
        y = cba(y, f"{b}.{j}", stride=s, groups=exp, act=act)
        j += 1
        if se:
            q = F.adaptive_avg_pool2d(y, 1)
            q = F.relu(F.conv2d(q, sd[f"{b}.{j}.fc1.weight"], sd[f"{b}.{j}.fc1.bias"]))
            q = F.hardsigmoid(F.conv2d(q, sd[f"{b}.{j}.fc2.weight"], sd[f"{b}.{j}.fc2.bias"]))
            y, j = q * y, j + 1
        y = cba(y, f"{b}.{j}")
        x = y + x if (s == 1 and cin == cout) else y
    x = cba(x, f"features.{len(V3_SMALL) + 1}", act=F.hardswish)
    x = x.mean(dim=(2, 3))
    x = F.hardswish(F.linear(x, sd["classifier.0.weight"], sd["classifier.0.bias"]))
    return F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"])


REF_FORWARD = {"tv_resnet18": ref_resnet18_forward, "tv_mobilenet_v3_small": ref_mobilenet_v3_small_forward}


@pytest.mark.parametrize("name", sorted(REF_FORWARD))
def test_forward_equals_functional_restatement(models, name):
    model = models[name]
    sd = _randomise(model, seed=1)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got, want = model(x), REF_FORWARD[name](x, sd)
    assert got.shape == (2, 1000)
    assert want.abs().max() > 1e-2  # not a vanishing signal
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    # the restatement is sensitive: BN eps 1e-5 instead of 1e-3 (or the reverse) is visible
    if name == "tv_mobilenet_v3_small":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-5
        with torch.no_grad():
            assert not torch.allclose(model(x), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-3


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_resnet50", "tv_mobilenet_v2", "tv_mobilenet_v3_small",
                                  "tv_mobilenet_v3_large"])
def test_symbolic_trace_same_output(models, name):
    model = models[name]
    gm = torch.fx.symbolic_trace(model)
    targets = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert torchvision_entry(name).classifier in targets
    x = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(3))  # non-square works too
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_mobilenet_v3_small"])
def test_onnx_export_runs_in_onnxruntime(models, name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, x = models[name], torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    assert abs(got - want).max() <= 1e-4 * max(1.0, abs(want).max())


@pytest.mark.parametrize("name", NAMES)
def test_num_classes_changes_only_the_classifier(models, name):
    e = torchvision_entry(name)
    small = create_torchvision_model(name, num_classes=7).state_dict()
    big = models[name].state_dict()
    assert set(small) == set(big)
    changed = sorted(k for k in big if small[k].shape != big[k].shape)
    assert changed == [f"{e.classifier}.bias", f"{e.classifier}.weight"]
    assert small[f"{e.classifier}.weight"].shape[0] == 7
    assert {k: tuple(v.shape) for k, v in small.items()} == REFERENCE[name](7)


@pytest.mark.parametrize("name", NAMES)
def test_entry_fields_and_split_points(models, name):
    e = torchvision_entry(name)
    model = models[name]
    mods = dict(model.named_modules())
    assert e.input_size == (3, 224, 224) and e.shorter_side == 256
    assert e.mean == (0.485, 0.456, 0.406) and e.std == (0.229, 0.224, 0.225)
    assert isinstance(mods[e.classifier], nn.Linear)
    pts = split_points(name)
    assert e.default_split in pts and e.classifier not in pts
    assert all(p in mods for p in pts)
    assert not any(e.classifier.startswith(p + ".") for p in pts)  # no point swallows the classifier
    cfg = e.default_cfg()
    assert cfg["default_split"] == e.default_split and cfg["split_points"] == list(pts)


def test_default_splits_leave_the_last_stage_trainable(models):
    """What each default split leaves trainable, at 224x224: the last resolution stage (7x7), not more."""
    x = torch.zeros(1, 3, 224, 224)
    for name, split, side in [("tv_resnet18", "layer3", 14), ("tv_mobilenet_v2", "features.13", 14),
                              ("tv_mobilenet_v3_small", "features.8", 14),
                              ("tv_mobilenet_v3_large", "features.12", 14)]:
        assert torchvision_entry(name).default_split == split
        seen: Dict[str, Shape] = {}

        def hook(_m, _i, o, seen=seen):
            seen["shape"] = tuple(o.shape)  # returns None: the output is left alone

        h = dict(models[name].named_modules())[split].register_forward_hook(hook)
        with torch.no_grad():
            models[name](x)
        h.remove()
        assert seen["shape"][-2:] == (side, side), name


@pytest.mark.benchmark
@pytest.mark.parametrize("name", NAMES)
def test_dynamo_onnx_export_every_family(name, tmp_path):
    """The project's default exporter (torch.onnx.export(dynamo=True), opset 18, dynamic batch) on every family,
    at 224x224 with randomised BN statistics; 10-45 s each on 2 CPU cores, hence ``-m benchmark``."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = create_torchvision_model(name).eval()
    _randomise(model, seed=5)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18, input_names=["input"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model(x3).numpy()
    got = sess.run(None, {"input": x3.numpy()})[0]
    assert abs(got - want).max() <= 1e-4 * max(1.0, abs(want).max())


def test_info_lists_the_torchvision_families():
    from lightcl.commands.info import _torchvision_models

    got = _torchvision_models()
    assert sorted(got) == list_torchvision_models()
    for name, cfg in got.items():
        e = torchvision_entry(name)
        assert (cfg["default_split"], cfg["classifier"], cfg["input_size"]) == (e.default_split, e.classifier,
                                                                                 [3, 224, 224])
        assert cfg["default_split"] in cfg["split_points"]
