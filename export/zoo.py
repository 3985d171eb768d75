"""Backbone zoo: a registry of models with consistent names (timm-style) and named split points.

Every backbone is a flat sequence of named blocks (``stem``, ``layer1.0``, ``layer1.1``, ...)
followed by global pooling and a linear classifier. Splitting at a name freezes everything up to
and including that block; the rest becomes the engine's trainable ``Head``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from lightcl.engine.blocks import BasicBlock, Stem
from lightcl.engine.head import Head

_REGISTRY: dict[str, Callable[..., "Backbone"]] = {}


def register_backbone(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(arch: str, num_classes: int = 10, width: int = 64, in_channels: int = 3) -> "Backbone":
    if arch not in _REGISTRY:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(list_backbones())}")
    return _REGISTRY[arch](num_classes=num_classes, width=width, in_channels=in_channels)


class Backbone(nn.Module):
    """Named blocks in order + pool + fc. ``block_names[i]`` names ``blocks[i]``."""

    def __init__(self, arch: str, named_blocks: list[tuple[str, nn.Module]], feat_dim: int, num_classes: int,
                 width: int, input_size: tuple[int, int, int] = (3, 32, 32)) -> None:
        super().__init__()
        self.arch, self.width, self.input_size = arch, width, tuple(input_size)
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


@register_backbone("resnet18")
def resnet18(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> Backbone:
    """CIFAR-style ResNet-18: 3x3 stem, no max-pool, stages w/2w/4w/8w, 2 basic blocks each."""
    blocks: list[tuple[str, nn.Module]] = [("stem", Stem(in_channels, width))]
    cin = width
    for stage, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2), (8, 2)], start=1):
        cout = width * mult
        for i in range(2):
            blocks.append((f"layer{stage}.{i}", BasicBlock(cin, cout, stride if i == 0 else 1)))
            cin = cout
    return Backbone("resnet18", blocks, feat_dim=cin, num_classes=num_classes, width=width,
                    input_size=(in_channels, 32, 32))


def split_points(model: Backbone) -> list[str]:
    """Every valid split name: stage level (``stem``, ``layer1``..) and block level (``layer4.0``)."""
    stages = []
    for n in model.block_names:
        s = n.split(".")[0]
        if s not in stages:
            stages.append(s)
    return stages + [n for n in model.block_names if "." in n]


def _split_index(model: Backbone, split: str) -> int:
    """Index of the last frozen block for ``split``."""
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
def split_backbone(model: Backbone, split: str = "layer3") -> tuple[FrozenPart, Head]:
    """Return ``(frozen, head)``, deep copies, with ``head(frozen(x)) == model(x)`` in eval mode.

    The frozen part is put in eval mode with ``requires_grad`` off (Maintain Generalizability).
    """
    import copy

    k = _split_index(model, split)
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
