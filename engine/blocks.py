"""Network building blocks shared by the host (backbone zoo) and the device (trainable head).

They live in the engine because the device must rebuild the head from ``head.safetensors``
without importing the exporter.

Extension points are data, not if-chains:

* every block type registers itself under the ``"type"`` of its JSON spec (:func:`register_block`);
  :func:`build_block` looks the type up and calls the class's ``from_spec``;
* every block says which of its internal outputs are LightCL feature taps (``tap_suffixes`` +
  ``forward_taps``); :func:`block_tap_names` and :func:`forward_block_taps` turn that into the tap names
  the head, the pattern memory and the authors' reference loop use (one rule, here);
* ``prunable`` says whether ``lightcl.export.prune`` knows the type's channel dependencies;
* ``maskable_weights()`` names the conv weights (relative to the block) that *weight*-sparsity methods
  (SparCL's masks) may mask: a block family opts in by listing them, so no method guesses by name.

Adding a block type: subclass :class:`Block`, decorate it with ``@register_block("name")``, implement
``spec``/``from_spec`` (and ``tap_suffixes``/``forward_taps`` when it has internal taps).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Tuple, Type, TypeVar

from torch import Tensor, nn

BLOCK_TYPES: Dict[str, Type["Block"]] = {}
"""Registered block classes by spec ``"type"`` (filled by :func:`register_block`)."""

_B = TypeVar("_B", bound=type)


def register_block(name: str) -> Callable[[_B], _B]:
    """Class decorator: ``build_block({"type": name, ...})`` builds this class with ``from_spec``."""

    def deco(cls: _B) -> _B:
        if name in BLOCK_TYPES and BLOCK_TYPES[name] is not cls:
            raise ValueError(f"block type {name!r} is already registered by {BLOCK_TYPES[name].__name__}")
        if not callable(getattr(cls, "from_spec", None)):
            raise TypeError(f"{cls.__name__} needs a from_spec(spec) classmethod to be registered")
        cls.block_type = name
        BLOCK_TYPES[name] = cls
        return cls

    return deco


def build_block(spec: dict) -> nn.Module:
    """The block a spec describes (``spec["type"]`` names a registered class). Unknown type or a malformed
    spec: ``ValueError`` (or ``KeyError``/``TypeError`` for a missing or mistyped field), which the head and
    frozen-part loaders turn into one :class:`IntegrityError` line."""
    if not isinstance(spec, dict):
        raise ValueError(f"a block spec must be a JSON object, got {type(spec).__name__}")
    kind = spec.get("type")
    cls = BLOCK_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown block type {kind!r}; known: {', '.join(sorted(BLOCK_TYPES))}")
    return cls.from_spec(spec)


def block_tap_names(name: str, block: nn.Module) -> list[str]:
    """LightCL's tap names of one block named ``name``: its declared internal taps (``name.suffix``, in the
    block's order), then its output (``name``)."""
    suffixes = block.tap_suffixes() if isinstance(block, Block) else ()
    return [f"{name}.{s}" for s in suffixes] + [name]


def forward_block_taps(name: str, block: nn.Module, x: Tensor, taps: dict) -> Tensor:
    """Run ``block`` on ``x``, adding its taps to ``taps`` (same names and order as :func:`block_tap_names`);
    return the block's output. The computation is the block's own ``forward_taps``: the same operations
    as ``forward``, so the numbers are identical with and without taps."""
    if isinstance(block, Block):
        out, inner = block.forward_taps(x)
        for s in block.tap_suffixes():
            taps[f"{name}.{s}"] = inner[s]
    else:
        out = block(x)
    taps[name] = out
    return out


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _ints(spec: dict, *keys: str) -> list[int]:
    return [int(spec[k]) for k in keys]


class Block(nn.Module):
    """A backbone block that can describe itself as JSON (``spec``) and be rebuilt from it (``from_spec``).

    ``tap_suffixes()``: names of the internal outputs that are LightCL feature taps (the block's output
    is always one); ``forward_taps(x)`` returns ``(output, {suffix: tensor})`` computed exactly as
    ``forward`` computes the output. ``prunable``: the structured pruner knows this type's channel graph.
    ``maskable_weights()``: the conv weights (``"conv1.weight"``, relative to the block) that unstructured
    weight-sparsity methods may mask; ``()`` (the default): none, the block stays dense.
    """

    block_type: ClassVar[str] = ""
    prunable: ClassVar[bool] = False
    cin: int
    cout: int

    def tap_suffixes(self) -> Tuple[str, ...]:
        return ()

    def forward_taps(self, x: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        return self(x), {}

    def maskable_weights(self) -> Tuple[str, ...]:
        return ()

    def spec(self) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> "Block":
        raise NotImplementedError


@register_block("basic")
class BasicBlock(Block):
    """ResNet basic block (two 3x3 convs + identity/1x1 shortcut).

    ``mid`` is the first conv's output width (default ``cout``): structured pruning gives every block
    its own. ``shortcut`` ("identity" | "conv", default: conv exactly when the stride or the width
    changes, as before) is explicit so a pruned block whose widths happen to match keeps its 1x1 conv.
    Taps (the authors' models.py): the first conv's output after BN+ReLU (``conv1``), then the block output.
    """

    prunable = True

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

    def tap_suffixes(self) -> Tuple[str, ...]:
        return ("conv1",)

    def maskable_weights(self) -> Tuple[str, ...]:
        """Both 3x3 convs, not the 1x1 shortcut (SparCL's resnet18_0.90.yaml: 16 layers)."""
        return ("conv1.weight", "conv2.weight")

    def forward_taps(self, x: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        h = self.first_conv(x)
        return self.rest(x, h), {"conv1": h}

    def spec(self) -> dict:
        """Dense blocks keep the original spec (no ``mid``/``shortcut`` keys), so old exports and new
        dense exports carry byte-identical specs; a pruned block adds what differs from the defaults."""
        s = {"type": "basic", "cin": self.cin, "cout": self.cout, "stride": self.stride}
        if self.mid != self.cout:
            s["mid"] = self.mid
        if self.shortcut_kind != self._default_shortcut:
            s["shortcut"] = self.shortcut_kind
        return s

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> "BasicBlock":
        mid = spec.get("mid")
        return cls(int(spec["cin"]), int(spec["cout"]), int(spec.get("stride", 1)),
                   mid=None if mid is None else int(mid), shortcut=spec.get("shortcut"))


@register_block("stem")
class Stem(Block):
    """CIFAR-style ResNet stem: 3x3 conv, BN, ReLU, no max-pool."""

    prunable = True

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

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> "Stem":
        return cls(*_ints(spec, "cin", "cout"))


@register_block("imagenet_stem")
class ImageNetStem(Block):
    """ImageNet-style ResNet stem (He et al. 2016; torchvision's ``conv1, bn1, relu, maxpool``): 7x7 stride-2
    conv, BN, ReLU, 3x3 stride-2 max-pool, so a 224x224 image reaches layer1 at 56x56. Not prunable (the
    pruner knows the CIFAR stem only)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        if min(cin, cout) < 1:
            raise ValueError(f"a stem needs at least one channel (cin {cin}, cout {cout})")
        self.cin, self.cout = cin, cout
        self.conv1 = nn.Conv2d(cin, cout, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def spec(self) -> dict:
        return {"type": "imagenet_stem", "cin": self.cin, "cout": self.cout}

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> "ImageNetStem":
        return cls(*_ints(spec, "cin", "cout"))


_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


@register_block("conv_bn_act")
class ConvBNAct(Block):
    """Conv (``kernel`` x ``kernel``, ``stride``, same padding, no bias) + BN + activation: MobileNetV2's
    stem (3x3) and its last 1x1 conv before pooling. No internal taps."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, act: str = "relu6") -> None:
        super().__init__()
        if min(cin, cout) < 1:
            raise ValueError(f"a conv block needs at least one channel (cin {cin}, cout {cout})")
        if kernel not in (1, 3, 5, 7) or stride not in (1, 2):
            raise ValueError(f"kernel must be 1, 3, 5 or 7 and stride 1 or 2, got kernel {kernel}, stride {stride}")
        self.cin, self.cout, self.kernel, self.stride, self.act_name = cin, cout, kernel, stride, act
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = _activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    def spec(self) -> dict:
        return {"type": "conv_bn_act", "cin": self.cin, "cout": self.cout, "kernel": self.kernel,
                "stride": self.stride, "act": self.act_name}

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> "ConvBNAct":
        cin, cout = _ints(spec, "cin", "cout")
        return cls(cin, cout, int(spec.get("kernel", 3)), int(spec.get("stride", 1)), str(spec.get("act", "relu6")))


@register_block("inverted_residual")
class InvertedResidual(Block):
    """MobileNetV2's inverted residual block (Sandler et al., CVPR 2018, arXiv 1801.04381, Fig. 3b / Table 1):
    1x1 expansion conv to ``cin * expand`` channels + BN + ReLU6 (absent when ``expand == 1``), 3x3 depthwise
    conv (``stride``) + BN + ReLU6, 1x1 linear projection to ``cout`` + BN; the input is added when the
    stride is 1 and ``cin == cout``.

    Taps, by analogy with the basic block's "first conv after BN + activation": the expansion conv's output
    (``expand``), or the depthwise conv's output (``dw``) in a block without expansion; then the block output.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 6) -> None:
        super().__init__()
        if min(cin, cout) < 1 or expand < 1:
            raise ValueError(f"an inverted residual needs channels >= 1 and expand >= 1 (cin {cin}, cout {cout}, "
                             f"expand {expand})")
        if stride not in (1, 2):
            raise ValueError(f"an inverted residual's stride must be 1 or 2, got {stride}")
        self.cin, self.cout, self.stride, self.expand = cin, cout, stride, expand
        self.hidden = hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        if expand != 1:
            self.expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
            self.expand_act = nn.ReLU6()
        self.dw_conv = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.dw_act = nn.ReLU6()
        self.project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(cout)

    def _first(self, x: Tensor) -> Tensor:
        if self.expand != 1:
            return self.expand_act(self.expand_bn(self.expand_conv(x)))
        return self.dw_act(self.dw_bn(self.dw_conv(x)))

    def _rest(self, x: Tensor, h: Tensor) -> Tensor:
        if self.expand != 1:
            h = self.dw_act(self.dw_bn(self.dw_conv(h)))
        out = self.project_bn(self.project_conv(h))
        return x + out if self.use_residual else out

    def forward(self, x: Tensor) -> Tensor:
        return self._rest(x, self._first(x))

    def tap_suffixes(self) -> Tuple[str, ...]:
        return ("expand",) if self.expand != 1 else ("dw",)

    def maskable_weights(self) -> Tuple[str, ...]:
        """The 1x1 expansion and projection convs (nearly all of the block's weights); the depthwise conv
        (9 weights per channel) stays dense, as the BasicBlock's 1x1 shortcut does."""
        return (("expand_conv.weight",) if self.expand != 1 else ()) + ("project_conv.weight",)

    def forward_taps(self, x: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        h = self._first(x)
        return self._rest(x, h), {self.tap_suffixes()[0]: h}

    def spec(self) -> dict:
        return {"type": "inverted_residual", "cin": self.cin, "cout": self.cout, "stride": self.stride,
                "expand": self.expand}

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> "InvertedResidual":
        cin, cout = _ints(spec, "cin", "cout")
        return cls(cin, cout, int(spec.get("stride", 1)), int(spec.get("expand", 6)))
