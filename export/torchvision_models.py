"""ImageNet-style families with torchvision's own state-dict keys and forward, without torchvision.

A user's torchvision checkpoint (``torch.save(torchvision.models.resnet18(...).state_dict(), p)``) loads into
these models as it is, ``load_state_dict(sd, strict=True)``, and gives torchvision's outputs: torchvision
itself cannot be a dependency here (no CPU build for this torch; its PyPI wheel does not import beside the CPU
torch). The definitions are our own code, restated from torchvision's source, keeping its module attribute
names (which *are* the state-dict keys), layer hyper-parameters and forward order:

* ``torchvision/models/resnet.py`` at pytorch/vision commit f50e776b051ddf007b90d7bc8f70b0708c12d008
  (``BasicBlock``, ``Bottleneck`` with the stride on the 3x3 conv, i.e. ResNet v1.5, ``ResNet``);
* ``torchvision/models/mobilenetv2.py`` at 9173b13b7ed3f9cc2426fe84aa15b47969a69828 (``InvertedResidual``
  with attribute ``conv``, ``MobileNetV2``, ``_make_divisible``; later versions build the same modules from
  ``Conv2dNormActivation``, so the keys are unchanged);
* ``torchvision/models/mobilenetv3.py`` at 2f7f558158c83c8119a02cd2446d85cd3c4c20e9 (the bneck tables of
  ``_mobilenet_v3_conf``, ``InvertedResidual`` with attribute ``block``, ``MobileNetV3`` with BatchNorm
  eps 0.001 / momentum 0.01, Hardswish, SE with Hardsigmoid, dropout 0.2 in the classifier; its weight metas
  give ``num_params`` 5,483,032 (large) and 2,542,856 (small), which tests/test_torchvision_models.py pins);
* ``torchvision/ops/misc.py`` (``Conv2dNormActivation``: an ``nn.Sequential`` of conv (bias only without a
  norm), norm, activation, padding ``(k - 1) // 2 * dilation``; ``SqueezeExcitation``: ``avgpool``, ``fc1``,
  ``fc2`` (1x1 convs with bias), ``activation``, ``scale_activation``, output ``scale * input``).

Every model is ``torch.fx.symbolic_trace``-able (no data-dependent control flow: the residual choices are
Python booleans fixed at construction) and ONNX-exportable.

Registry entries (:func:`torchvision_entry`) carry what an export needs besides the weights: the input size,
ImageNet mean/std, torchvision's eval transform (resize the shorter side to 256, centre-crop 224), the
classifier's module name and a default split. A split name is a module's qualified name; everything up to and
including it is frozen. Default splits, each chosen like the zoo's ``layer3``: the last resolution stage, the
last conv and the classifier stay trainable:

* ResNets, ``layer3``: ``layer4`` (the 7x7 stage at 224) and ``fc`` train;
* ``tv_mobilenet_v2``, ``features.13``: ``features.14``-``features.17`` (the 160/320-channel blocks at 7x7),
  ``features.18`` (the 1x1 conv to 1280) and ``classifier`` train;
* ``tv_mobilenet_v3_large``, ``features.12``: ``features.13``-``features.15`` (the 160-channel bnecks at 7x7),
  ``features.16`` (the 1x1 conv to 960) and ``classifier`` train;
* ``tv_mobilenet_v3_small``, ``features.8``: ``features.9``-``features.11`` (the 96-channel bnecks at 7x7),
  ``features.12`` (the 1x1 conv to 576) and ``classifier`` train.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor, nn

from lightcl.engine.errors import InputError

from .registry import cached_points, known, lookup

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


class UnknownModelError(InputError):
    """A torchvision family name or split point that is not registered."""


# --------------------------------------------------------------------------------------------------- shared parts

def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, never more than 10 % down."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """conv -> norm -> activation as ``nn.Sequential`` children ``0``, ``1``, ``2`` (torchvision's key layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
                 activation_layer: Optional[Callable[..., nn.Module]] = nn.ReLU, dilation: int = 1) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: List[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                             dilation=dilation, groups=groups, bias=norm_layer is None)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: per-channel scale from pooled features, two 1x1 convs (``fc1``, ``fc2``)."""

    def __init__(self, input_channels: int, squeeze_channels: int,
                 activation: Callable[..., nn.Module] = nn.ReLU,
                 scale_activation: Callable[..., nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, input: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(input)))))
        return scale * input


# --------------------------------------------------------------------------------------------------------- ResNet

def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs + identity (or ``downsample``: 1x1 conv + BN when the shape changes)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride: ResNet v1.5, as torchvision), 1x1 expand x4, + identity."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        width = planes
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ImageNet ResNet: 7x7/2 stem, 3x3/2 max-pool, four stages, global pool, ``fc``."""

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: Sequence[int], num_classes: int = 1000,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: Type[Union[BasicBlock, Bottleneck]], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# ---------------------------------------------------------------------------------------------------- MobileNetV2

MOBILENET_V2_SETTING: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
"""(expand t, channels c, repeats n, first stride s), torchvision's ``inverted_residual_setting``."""


class InvertedResidualV2(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise -> 1x1 linear projection, under attribute ``conv``."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1, activation_layer=nn.ReLU6))
        layers += [Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim,
                                        activation_layer=nn.ReLU6),
                   nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """``features`` (stem, 17 inverted residuals, 1x1 conv to 1280), global pool, ``classifier`` (dropout, linear)."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 round_nearest: int = 8) -> None:
        super().__init__()
        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: List[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2, activation_layer=nn.ReLU6)]
        for t, c, n, s in MOBILENET_V2_SETTING:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidualV2(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1,
                                             activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        _init_mobilenet(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _init_mobilenet(model: nn.Module) -> None:
    """torchvision's MobileNet init: kaiming-normal fan-out convs, unit BN, N(0, 0.01) linears, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------------- MobileNetV3

@dataclass(frozen=True)
class BneckConfig:
    """One row of MobileNetV3's Table 1/2 (torchvision's ``InvertedResidualConfig`` at width 1.0)."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int


def _bneck(cin: int, k: int, exp: int, cout: int, se: bool, act: str, s: int) -> BneckConfig:
    return BneckConfig(make_divisible(cin), k, make_divisible(exp), make_divisible(cout), se, act == "HS", s)


MOBILENET_V3_LARGE: Tuple[BneckConfig, ...] = tuple(_bneck(*r) for r in (
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1)))
MOBILENET_V3_SMALL: Tuple[BneckConfig, ...] = tuple(_bneck(*r) for r in (
    (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1)))


class InvertedResidualV3(nn.Module):
    """MobileNetV3 bneck: [1x1 expand] -> kxk depthwise -> [SE, hard-sigmoid] -> 1x1 projection, under ``block``."""

    def __init__(self, cnf: BneckConfig, norm_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        if not 1 <= cnf.stride <= 2:
            raise ValueError("illegal stride value")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        act = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: List[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(Conv2dNormActivation(cnf.input_channels, cnf.expanded_channels, kernel_size=1,
                                               norm_layer=norm_layer, activation_layer=act))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.expanded_channels, kernel_size=cnf.kernel,
                                           stride=cnf.stride, groups=cnf.expanded_channels,
                                           norm_layer=norm_layer, activation_layer=act))
        if cnf.use_se:
            layers.append(SqueezeExcitation(cnf.expanded_channels, make_divisible(cnf.expanded_channels // 4, 8),
                                            scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.out_channels, kernel_size=1,
                                           norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result = result + input
        return result


class MobileNetV3(nn.Module):
    """``features`` (hardswish stem, bnecks, 1x1 conv to 6x the last width), pool, ``classifier``
    (linear, hardswish, dropout, linear). BatchNorm eps 0.001, momentum 0.01 (TensorFlow's values)."""

    def __init__(self, setting: Sequence[BneckConfig], last_channel: int, num_classes: int = 1000,
                 dropout: float = 0.2) -> None:
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        layers: List[nn.Module] = [Conv2dNormActivation(3, setting[0].input_channels, kernel_size=3, stride=2,
                                                        norm_layer=norm_layer, activation_layer=nn.Hardswish)]
        layers += [InvertedResidualV3(cnf, norm_layer) for cnf in setting]
        lastconv_in = setting[-1].out_channels
        lastconv_out = 6 * lastconv_in
        layers.append(Conv2dNormActivation(lastconv_in, lastconv_out, kernel_size=1, norm_layer=norm_layer,
                                           activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(lastconv_out, last_channel), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=dropout, inplace=True), nn.Linear(last_channel, num_classes))
        _init_mobilenet(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


# ------------------------------------------------------------------------------------------------------ factories

def resnet18(num_classes: int = 1000, **kw: Any) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kw)


def resnet34(num_classes: int = 1000, **kw: Any) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, **kw)


def resnet50(num_classes: int = 1000, **kw: Any) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, **kw)


def mobilenet_v2(num_classes: int = 1000, **kw: Any) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes, **kw)


def mobilenet_v3_large(num_classes: int = 1000, **kw: Any) -> MobileNetV3:
    return MobileNetV3(MOBILENET_V3_LARGE, make_divisible(1280), num_classes=num_classes, **kw)


def mobilenet_v3_small(num_classes: int = 1000, **kw: Any) -> MobileNetV3:
    return MobileNetV3(MOBILENET_V3_SMALL, make_divisible(1024), num_classes=num_classes, **kw)


# ------------------------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class TorchvisionEntry:
    """One torchvision-keyed family and what an export of it needs besides the weights.

    ``build(num_classes=1000, **kw)`` makes the model; ``torchvision_name`` is torchvision's own builder name
    (``torchvision.models.<it>``), whose state dicts load strictly; ``default_split`` and ``classifier`` are
    module qualified names; ``mean``/``std`` and ``shorter_side`` describe torchvision's eval transform
    (resize the shorter side to ``shorter_side``, centre-crop ``input_size[1:]``).
    """

    name: str
    build: Callable[..., nn.Module] = field(repr=False, compare=False)
    torchvision_name: str = ""
    input_size: Tuple[int, int, int] = (3, 224, 224)
    default_split: str = ""
    classifier: str = ""
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    shorter_side: int = 256
    description: str = ""
    _points: list = field(default_factory=list, repr=False, compare=False)

    @property
    def split_points(self) -> Tuple[str, ...]:
        """Valid split names (built once, without touching the caller's random stream)."""
        return cached_points(self._points, lambda: _split_points(self.build(num_classes=2), self.classifier))

    def default_cfg(self) -> Dict[str, Any]:
        """JSON-clean summary (``lightcl info``, docs, tests)."""
        return {"arch": self.name, "torchvision_name": self.torchvision_name, "input_size": list(self.input_size),
                "default_split": self.default_split, "classifier": self.classifier, "mean": list(self.mean),
                "std": list(self.std), "shorter_side": self.shorter_side, "split_points": list(self.split_points),
                "description": self.description}


def _split_points(model: nn.Module, classifier: str) -> List[str]:
    """Top-level children, then their direct children, in registration (= forward) order, stopping before the
    classifier: a split there would leave nothing to train. A container holding the classifier is not a point."""
    top, inner = [], []
    for name, child in model.named_children():
        if name == classifier:
            break
        subs = [f"{name}.{n}" for n, _ in child.named_children()]
        if classifier.startswith(name + "."):
            inner += subs[:next(i for i, s in enumerate(subs) if classifier == s or classifier.startswith(s + "."))]
            break
        top.append(name)
        inner += subs
    return top + inner


_ENTRIES: Dict[str, TorchvisionEntry] = {e.name: e for e in (
    TorchvisionEntry("tv_resnet18", resnet18, "resnet18", default_split="layer3", classifier="fc",
                     description="torchvision ResNet-18 (ImageNet, 11.7 M parameters)"),
    TorchvisionEntry("tv_resnet34", resnet34, "resnet34", default_split="layer3", classifier="fc",
                     description="torchvision ResNet-34 (ImageNet, 21.8 M parameters)"),
    TorchvisionEntry("tv_resnet50", resnet50, "resnet50", default_split="layer3", classifier="fc",
                     description="torchvision ResNet-50 (ImageNet, bottleneck v1.5, 25.6 M parameters)"),
    TorchvisionEntry("tv_mobilenet_v2", mobilenet_v2, "mobilenet_v2", default_split="features.13",
                     classifier="classifier.1", description="torchvision MobileNetV2 (ImageNet, 3.5 M parameters)"),
    TorchvisionEntry("tv_mobilenet_v3_small", mobilenet_v3_small, "mobilenet_v3_small", default_split="features.8",
                     classifier="classifier.3",
                     description="torchvision MobileNetV3-Small (ImageNet, 2.5 M parameters)"),
    TorchvisionEntry("tv_mobilenet_v3_large", mobilenet_v3_large, "mobilenet_v3_large",
                     default_split="features.12", classifier="classifier.3",
                     description="torchvision MobileNetV3-Large (ImageNet, 5.5 M parameters)"),
)}


def list_torchvision_models() -> List[str]:
    """Registered names, sorted."""
    return known(_ENTRIES)


def torchvision_entry(name: str) -> TorchvisionEntry:
    """The entry of ``name``; :class:`UnknownModelError` naming the known ones otherwise."""
    return lookup(_ENTRIES, name, "torchvision model", UnknownModelError)


def create_torchvision_model(name: str, num_classes: int = 1000, **kw: Any) -> nn.Module:
    """``name`` with ``num_classes`` outputs; ``kw`` go to the builder (``dropout=`` for the MobileNets,
    ``zero_init_residual=`` for the ResNets, ``width_mult=`` for MobileNetV2)."""
    if int(num_classes) < 1:
        raise InputError(f"num_classes must be >= 1, got {num_classes}")
    return torchvision_entry(name).build(num_classes=int(num_classes), **kw)


def split_points(name: str) -> Tuple[str, ...]:
    """Valid split names of ``name``: top-level children and their direct children that leave the classifier
    trainable (``layer3``, ``layer3.1`` for a ResNet; ``features``, ``features.13`` for a MobileNet)."""
    return torchvision_entry(name).split_points
