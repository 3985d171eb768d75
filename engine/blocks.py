"""Network building blocks shared by the host (backbone zoo) and the device (trainable head).

They live in the engine because the device must rebuild the head from ``head.safetensors``
without importing the exporter.
"""
from __future__ import annotations

from torch import Tensor, nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs + identity/1x1 shortcut).

    ``mid`` is the first conv's output width (default ``cout``): structured pruning gives every block
    its own. ``shortcut`` ("identity" | "conv", default: conv exactly when the stride or the width
    changes, as before) is explicit so a pruned block whose widths happen to match keeps its 1x1 conv.
    """

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, mid: int | None = None,
                 shortcut: str | None = None) -> None:
        super().__init__()
        mid = cout if mid is None else int(mid)
        default_sc = "conv" if (stride != 1 or cin != cout) else "identity"
        shortcut = default_sc if shortcut is None else shortcut
        if shortcut not in ("identity", "conv"):
            raise ValueError(f"shortcut must be 'identity' or 'conv', got {shortcut!r}")
        if shortcut == "identity" and default_sc == "conv":
            raise ValueError(f"an identity shortcut needs stride 1 and cin == cout (got stride {stride}, {cin} -> {cout})")
        if min(cin, cout, mid) < 1:
            raise ValueError(f"a block needs at least one channel everywhere (cin {cin}, mid {mid}, cout {cout})")
        self.cin, self.cout, self.stride, self.mid = cin, cout, stride, mid
        self._default_shortcut = default_sc
        self.shortcut_kind = shortcut
        self.conv1 = conv3x3(cin, mid, stride)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(mid, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if shortcut == "conv":
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
        """Dense blocks keep the original spec (no ``mid``/``shortcut`` keys), so old exports and new
        dense exports carry byte-identical specs; a pruned block adds what differs from the defaults."""
        s = {"type": "basic", "cin": self.cin, "cout": self.cout, "stride": self.stride}
        if self.mid != self.cout:
            s["mid"] = self.mid
        if self.shortcut_kind != self._default_shortcut:
            s["shortcut"] = self.shortcut_kind
        return s


class Stem(nn.Module):
    """CIFAR-style stem: 3x3 conv, BN, ReLU, no max-pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        if min(cin, cout) < 1:
            raise ValueError(f"a stem needs at least one channel (cin {cin}, cout {cout})")
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
        mid = spec.get("mid")
        return BasicBlock(int(spec["cin"]), int(spec["cout"]), int(spec.get("stride", 1)),
                          mid=None if mid is None else int(mid), shortcut=spec.get("shortcut"))
    if kind == "stem":
        return Stem(int(spec["cin"]), int(spec["cout"]))
    raise ValueError(f"unknown block type {kind!r}")
