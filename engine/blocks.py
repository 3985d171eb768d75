"""Network building blocks shared by the host (backbone zoo) and the device (trainable head).

They live in the engine because the device must rebuild the head from ``head.safetensors``
without importing the exporter.
"""
from __future__ import annotations

from torch import Tensor, nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs + identity/1x1 shortcut)."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def first_conv(self, x: Tensor) -> Tensor:
        """Output of the first conv after BN+ReLU: one of LightCL's feature taps."""
        return self.relu(self.bn1(self.conv1(x)))

    def rest(self, x: Tensor, h: Tensor) -> Tensor:
        return self.relu(self.bn2(self.conv2(h)) + self.shortcut(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.rest(x, self.first_conv(x))

    def spec(self) -> dict:
        return {"type": "basic", "cin": self.cin, "cout": self.cout, "stride": self.stride}


class Stem(nn.Module):
    """CIFAR-style stem: 3x3 conv, BN, ReLU, no max-pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cin, self.cout = cin, cout
        self.conv1 = conv3x3(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def spec(self) -> dict:
        return {"type": "stem", "cin": self.cin, "cout": self.cout}


BLOCK_TYPES = {"basic": BasicBlock, "stem": Stem}


def build_block(spec: dict) -> nn.Module:
    kind = spec.get("type")
    if kind == "basic":
        return BasicBlock(int(spec["cin"]), int(spec["cout"]), int(spec.get("stride", 1)))
    if kind == "stem":
        return Stem(int(spec["cin"]), int(spec["cout"]))
    raise ValueError(f"unknown block type {kind!r}")
