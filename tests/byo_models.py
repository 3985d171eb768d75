"""Models that are not in lightcl's zoo, importable by path (``tests.byo_models:tiny_resnet``) for the
bring-your-own-model tests: a non-chain graph (residual adds, a squeeze-excitation gate, a custom forward
with functional ops and tensor methods)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Gate(nn.Module):
    """Squeeze-excitation: the block's output scaled by a learned per-channel gate (a second path)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, max(1, c // 4), 1)
        self.expand = nn.Conv2d(max(1, c // 4), c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, gate: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.gate = Gate(cout) if gate else nn.Identity()
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.gate(self.bn2(self.conv2(out)))
        idt = x if self.down is None else self.down(x)
        return (out + idt).relu()


class TinyResNet(nn.Module):
    """stem -> stages.0, stages.1 (residual blocks) -> pool -> dropout -> fc; width ``w``."""

    def __init__(self, num_classes: int = 10, w: int = 8, in_ch: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(Residual(w, w), Residual(w, 2 * w, 2))
        self.tail = nn.Sequential(Residual(2 * w, 2 * w, gate=True), Residual(2 * w, 4 * w, 2, gate=True))
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = self.tail(self.stages(self.stem(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.drop(x))


class LongSkip(nn.Module):
    """A skip from the stem to the end: no split after ``a`` keeps it on one side."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        s = self.stem(x)
        y = self.b(self.a(s)) + s
        return self.fc(y.mean((2, 3)))


def tiny_resnet(num_classes: int = 10) -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet(num_classes)


def tiny_resnet_5() -> TinyResNet:
    return tiny_resnet(5)
