"""Backbone zoo: a registry of models with consistent names (timm-style) and named split points.

Every backbone is a flat sequence of named blocks (``stem``, ``layer1.0``, ``layer1.1``, ...)
followed by global pooling and a linear classifier. Splitting at a name freezes everything up to
and including that block; the rest becomes the engine's trainable ``Head``.

Each registry entry carries its default configuration (timm's ``default_cfg`` idea): input size,
default split, valid split points, default width. Code that needs "the default split" or "the input
size" asks :func:`backbone_entry` instead of repeating ``"layer3"`` or ``(3, 32, 32)``.

Adding a backbone: a function ``fn(num_classes, width, in_channels) -> Backbone`` built from registered
blocks (:mod:`lightcl.engine.blocks`), decorated with ``@register_backbone("name", default_split=...)``.
Pretraining, export, learning and the benchmark then take it with no other change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from lightcl.engine.blocks import BasicBlock, ConvBNAct, ImageNetStem, InvertedResidual, Stem
from lightcl.engine.head import Head

from .registry import cached_points, known, lookup

DEFAULT_INPUT_SIZE: Tuple[int, int, int] = (3, 32, 32)
"""What a backbone registered without ``input_size`` takes (the zoo's CIFAR-style 32x32 RGB)."""


@dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone and its default configuration.

    ``build(num_classes=, width=, in_channels=)`` makes the model; ``input_size`` is ``[C, H, W]`` (the
    channel count is the default ``in_channels``); ``default_split`` is where ``lightcl export`` and the
    scenarios split when none is named; ``default_width`` is ``lightcl pretrain``'s width when none is given
    (the width knob: 64 = paper-sized, 32 = demo, 16 = tests, for every family); ``split_points`` are the
    valid names for ``--split`` (computed once from the blocks' names).
    """

    name: str
    build: Callable[..., "Backbone"] = field(repr=False, compare=False)
    input_size: Tuple[int, int, int] = DEFAULT_INPUT_SIZE
    default_split: Optional[str] = None
    default_width: int = 64
    description: str = ""
    _points: list = field(default_factory=list, repr=False, compare=False)

    @property
    def split_points(self) -> Tuple[str, ...]:
        # built once, at a tiny width, without touching the caller's random stream
        return cached_points(self._points, lambda: split_points(self.build(num_classes=2, width=8,
                                                                           in_channels=self.input_size[0])))

    @property
    def split(self) -> str:
        """The default split: ``default_split``, else the last stage but one (``layer3`` of a ResNet)."""
        if self.default_split is not None:
            return self.default_split
        stages = [p for p in self.split_points if "." not in p]
        return stages[-2] if len(stages) > 1 else stages[-1]

    def default_cfg(self) -> Dict[str, Any]:
        """JSON-clean summary (``lightcl info``, docs, tests)."""
        return {"arch": self.name, "input_size": list(self.input_size), "default_split": self.split,
                "split_points": list(self.split_points), "default_width": self.default_width,
                "description": self.description}


_REGISTRY: Dict[str, BackboneEntry] = {}


def register_backbone(name: str, *, input_size: Tuple[int, int, int] = DEFAULT_INPUT_SIZE,
                      default_split: Optional[str] = None, default_width: int = 64, description: str = ""):
    """Decorator registering ``fn(num_classes, width, in_channels) -> Backbone`` under ``name``."""

    def deco(fn):
        if len(input_size) != 3 or any(int(v) < 1 for v in input_size):
            raise ValueError(f"input_size of {name!r} must be [C, H, W] of positive integers, got {input_size}")
        _REGISTRY[name] = BackboneEntry(name, fn, tuple(int(v) for v in input_size), default_split,
                                        int(default_width), description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def list_backbones() -> list[str]:
    return known(_REGISTRY)


def backbone_entry(arch: str) -> BackboneEntry:
    """The registry entry of ``arch``; ``ValueError`` naming the known ones if it is unknown."""
    return lookup(_REGISTRY, arch, "arch")


def default_split(arch: str) -> str:
    """Where ``arch`` is split when no split is named."""
    return backbone_entry(arch).split


def create_backbone(arch: str, num_classes: int = 10, width: Optional[int] = None, in_channels: Optional[int] = None
                    ) -> "Backbone":
    """``arch`` with ``num_classes`` outputs; ``width``/``in_channels`` default to the entry's."""
    e = backbone_entry(arch)
    return e.build(num_classes=num_classes, width=e.default_width if width is None else width,
                   in_channels=e.input_size[0] if in_channels is None else in_channels)


class Backbone(nn.Module):
    """Named blocks in order + pool + fc. ``block_names[i]`` names ``blocks[i]``."""

    def __init__(self, arch: str, named_blocks: list[tuple[str, nn.Module]], feat_dim: int, num_classes: int,
                 width: int, input_size: tuple[int, int, int] | None = None) -> None:
        """``input_size`` None: the registry entry's ``[H, W]`` with the first block's input channels."""
        super().__init__()
        if input_size is None:
            hw = backbone_entry(arch).input_size[1:] if arch in _REGISTRY else DEFAULT_INPUT_SIZE[1:]
            input_size = (int(getattr(named_blocks[0][1], "cin", DEFAULT_INPUT_SIZE[0])), *hw)
        self.arch, self.width, self.input_size = arch, width, tuple(int(v) for v in input_size)
        self.block_names = [n for n, _ in named_blocks]
        self.blocks = nn.ModuleList(m for _, m in named_blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(feat_dim, num_classes)
        self.feat_dim = feat_dim
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def forward(self, x: Tensor) -> Tensor:
        for b in self.blocks:
            x = b(x)
        return self.fc(torch.flatten(self.pool(x), 1))

    def config(self) -> dict:
        return {"arch": self.arch, "width": self.width, "num_classes": self.num_classes,
                "input_size": list(self.input_size)}


@register_backbone("resnet18", default_split="layer3", default_width=64,
                   description="CIFAR-style ResNet-18 (the paper's backbone)")
def resnet18(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> Backbone:
    """CIFAR-style ResNet-18: 3x3 stem, no max-pool, stages w/2w/4w/8w, 2 basic blocks each."""
    return _resnet18("resnet18", Stem(in_channels, width), num_classes, width)


@register_backbone("resnet18_imagenet", input_size=(3, 224, 224), default_split="layer3", default_width=64,
                   description="ImageNet-style ResNet-18 at 224x224 (7x7 stride-2 stem + max-pool)")
def resnet18_imagenet(num_classes: int = 1000, width: int = 64, in_channels: int = 3) -> Backbone:
    """ImageNet-style ResNet-18 (He et al. 2016, torchvision's architecture; the zoo's block names, not
    torchvision's state-dict keys): 7x7 stride-2 stem and max-pool, then the same four stages; 224x224
    reaches layer4 at 7x7. The camera-resolution benchmark's model (docs/results/camera.md)."""
    return _resnet18("resnet18_imagenet", ImageNetStem(in_channels, width), num_classes, width)


def _resnet18(arch: str, stem: nn.Module, num_classes: int, width: int) -> Backbone:
    blocks: list[tuple[str, nn.Module]] = [("stem", stem)]
    cin = width
    for stage, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)], start=1):
        cout = width * mult
        for i in range(2):
            blocks.append((f"layer{stage}.{i}", BasicBlock(cin, cout, stride if i == 0 else 1)))
            cin = cout
    return Backbone(arch, blocks, feat_dim=cin, num_classes=num_classes, width=width)


MOBILENETV2_STAGES: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
"""(expansion t, channels c, repeats n, first stride s) of MobileNetV2's seven stages (Sandler et al.,
CVPR 2018, arXiv 1801.04381, Table 2), with the CIFAR adaptation for 32x32 inputs: stride 1 in the stem
and in stage 2 (the paper's 224x224 net has 2 and 2), so the last stages run at 4x4 like the CIFAR ResNet-18."""
MOBILENETV2_LAST = 1280


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor`` without losing more than 10 % (the
    MobileNet width-multiplier rule of the TensorFlow reference implementation)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


@register_backbone("mobilenetv2", default_split="stage5", default_width=64,
                   description="CIFAR-style MobileNetV2 (stride-1 stem, inverted residuals, ReLU6)")
def mobilenetv2(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> Backbone:
    """CIFAR-style MobileNetV2: 3x3 stride-1 stem, seven stages of inverted residual blocks (expansion 6,
    1 in stage 1), a 1x1 conv to 1280 channels, pool, classifier. ``width`` maps onto the width multiplier
    ``alpha = width / 64`` (64 = the paper's 1.0; 32 = 0.5; 16 = 0.25), channels rounded to multiples of 8,
    the last conv never narrower than 1280. Blocks: ``stem``, ``stage1.0`` .. ``stage7.0``, ``last_conv``;
    the default split ``stage5`` leaves trainable everything that runs at 4x4 (stages 6-7 and the last
    conv), as ``layer3`` does for the ResNet."""
    return _mobilenetv2("mobilenetv2", num_classes, width, in_channels, stem_stride=1, stages=MOBILENETV2_STAGES)


@register_backbone("mobilenetv2_imagenet", input_size=(3, 224, 224), default_split="stage5", default_width=64,
                   description="ImageNet-style MobileNetV2 at 224x224 (the paper's strides)")
def mobilenetv2_imagenet(num_classes: int = 1000, width: int = 64, in_channels: int = 3) -> Backbone:
    """MobileNetV2 with the paper's strides (stride-2 stem and stage 2: Sandler et al. Table 2), 224x224 in,
    7x7 at stages 6-7; the default split ``stage5`` leaves those stages and the last conv trainable."""
    stages = tuple((t, c, n, 2 if i == 1 else s) for i, (t, c, n, s) in enumerate(MOBILENETV2_STAGES))
    return _mobilenetv2("mobilenetv2_imagenet", num_classes, width, in_channels, stem_stride=2, stages=stages)


def _mobilenetv2(arch: str, num_classes: int, width: int, in_channels: int, stem_stride: int,
                 stages: Tuple[Tuple[int, int, int, int], ...]) -> Backbone:
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    alpha = width / 64.0
    cin = make_divisible(32 * alpha)
    blocks: list[tuple[str, nn.Module]] = [("stem", ConvBNAct(in_channels, cin, kernel=3, stride=stem_stride,
                                                              act="relu6"))]
    for stage, (t, c, n, s) in enumerate(stages, start=1):
        cout = make_divisible(c * alpha)
        for i in range(n):
            blocks.append((f"stage{stage}.{i}", InvertedResidual(cin, cout, s if i == 0 else 1, expand=t)))
            cin = cout
    last = make_divisible(MOBILENETV2_LAST * max(1.0, alpha))
    blocks.append(("last_conv", ConvBNAct(cin, last, kernel=1, stride=1, act="relu6")))
    return Backbone(arch, blocks, feat_dim=last, num_classes=num_classes, width=width)


def split_points(model: Backbone) -> list[str]:
    """Every valid split name: stage level (``stem``, ``layer1``..) and block level (``layer4.0``)."""
    stages = []
    for n in model.block_names:
        s = n.split(".")[0]
        if s not in stages:
            stages.append(s)
    return stages + [n for n in model.block_names if "." in n]


def split_index(model: Backbone, split: str) -> int:
    """Index of the last frozen block for ``split`` (public: the benchmark splits checkpoints too)."""
    if split in model.block_names:
        return model.block_names.index(split)
    idx = [i for i, n in enumerate(model.block_names) if n.split(".")[0] == split]
    if not idx:
        raise ValueError(f"unknown split point {split!r} for {model.arch}; valid: {', '.join(split_points(model))}")
    return idx[-1]


class FrozenPart(nn.Module):
    """The frozen lower/middle layers: blocks[0..k]. Exported to ONNX / TensorRT."""

    def __init__(self, names: list[str], blocks: list[nn.Module]) -> None:
        super().__init__()
        self.block_names = names
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for b in self.blocks:
            x = b(x)
        return x


@torch.no_grad()
def split_backbone(model: Backbone, split: str | None = None) -> tuple[FrozenPart, Head]:
    """Return ``(frozen, head)``, deep copies, with ``head(frozen(x)) == model(x)`` in eval mode.

    ``split`` None: the backbone's default split (its registry entry). The frozen part is put in eval
    mode with ``requires_grad`` off (Maintain Generalizability).
    """
    import copy

    if split is None:
        split = default_split(model.arch)
    k = split_index(model, split)
    frozen = FrozenPart(model.block_names[: k + 1], [copy.deepcopy(b) for b in model.blocks[: k + 1]])
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    probe = torch.zeros(1, *model.input_size)
    was_training = model.training
    model.eval()
    feat_shape = list(frozen(probe).shape[1:])
    model.train(was_training)
    specs = []
    for name, b in zip(model.block_names[k + 1:], model.blocks[k + 1:]):
        specs.append({"name": name, **b.spec()})
    config = {
        "arch": model.arch,
        "width": model.width,
        "split": split,
        "blocks": specs,
        "in_features": feat_shape,
        "feat_dim": model.feat_dim,
        "num_classes": model.num_classes,
    }
    head = Head(config)
    for dst, src in zip(head.blocks, model.blocks[k + 1:]):
        dst.load_state_dict(src.state_dict())
    head.fc.load_state_dict(model.fc.state_dict())
    return frozen, head
