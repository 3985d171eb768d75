"""Any traced network as JSON: built-in torch layers and whitelisted operations only, rebuilt with no user code.

A user's own ``nn.Module`` is split and traced on the host with ``torch.fx`` (``lightcl.export.intake``);
what the device gets is this module's *graph spec*: a JSON object ::

    {"format": "lightcl-graph/1",
     "modules": {"layer4.0.conv1": {"type": "Conv2d", "args": {"in_channels": 64, ...}}, ...},
     "attrs":   {"scale": {"shape": [1, 64, 1, 1], "param": true}},      # tensors read with get_attr
     "nodes":   [{"name": "x", "op": "placeholder"},
                 {"name": "layer4_0_conv1", "op": "call_module", "target": "layer4.0.conv1",
                  "args": [{"node": "x"}], "kwargs": {}},
                 {"name": "add", "op": "call_function", "target": "operator.add", "args": [...], "kwargs": {}},
                 ...,
                 {"name": "output", "op": "output", "args": [{"node": "fc"}]}]}

Every module type is a built-in ``torch.nn`` layer from :data:`MODULE_TYPES` (constructor arguments read
back from the layer), every ``call_function`` target a name in :data:`FUNCTIONS`, every ``call_method``
one of :data:`METHODS`. Arguments are JSON values plus ``{"node": name}``, ``{"tuple": [...]}`` and
``{"slice": [start, stop, step]}``. :class:`GraphNet` runs the spec by interpreting its nodes in order
(no generated code, no ``exec``, no pickle); its ``state_dict`` keys are the original module paths, so
the weights are an ordinary safetensors file. A crafted or damaged spec (unknown type, op or name,
a reference to a later node, absurd sizes) is refused with one :class:`IntegrityError` line by
:func:`check_spec` before anything is allocated. Python 3.8 / torch 1.13 compatible.
"""
from __future__ import annotations

import json
import math
import operator
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import IntegrityError

GRAPH_FORMAT = "lightcl-graph/1"
MAX_NODES = 100_000
MAX_ELEMENTS = 1 << 28  # parameters + attribute tensors of one part (1 GiB of float32; ResNet-50 is 25.6 M)
MAX_DIM = 1 << 16  # any channel count / feature count
MAX_KERNEL = 64
MAX_DEPTH = 16  # nesting of argument containers

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_PATH = re.compile(r"[A-Za-z0-9_]{1,100}(\.[A-Za-z0-9_]{1,100}){0,31}")


# ----------------------------------------------------------------------------------- whitelisted layers
def _pair_or_int(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# type name -> (class, {constructor argument: how to read it from an instance})
def _attr(name: str) -> Callable[[nn.Module], Any]:
    return lambda m: _pair_or_int(getattr(m, name))


def _has_bias(m: nn.Module) -> bool:
    return getattr(m, "bias", None) is not None


_CONV = {"in_channels": _attr("in_channels"), "out_channels": _attr("out_channels"),
         "kernel_size": _attr("kernel_size"), "stride": _attr("stride"), "padding": _attr("padding"),
         "dilation": _attr("dilation"), "groups": _attr("groups"), "bias": _has_bias,
         "padding_mode": _attr("padding_mode")}
_BN = {"num_features": _attr("num_features"), "eps": _attr("eps"), "momentum": _attr("momentum"),
       "affine": _attr("affine"), "track_running_stats": _attr("track_running_stats")}
_INPLACE = {"inplace": _attr("inplace")}

MODULE_TYPES: Dict[str, Tuple[type, Dict[str, Callable[[nn.Module], Any]]]] = {
    "Conv2d": (nn.Conv2d, _CONV),
    "Conv1d": (nn.Conv1d, _CONV),
    "BatchNorm2d": (nn.BatchNorm2d, _BN),
    "BatchNorm1d": (nn.BatchNorm1d, _BN),
    "GroupNorm": (nn.GroupNorm, {"num_groups": _attr("num_groups"), "num_channels": _attr("num_channels"),
                                 "eps": _attr("eps"), "affine": _attr("affine")}),
    "LayerNorm": (nn.LayerNorm, {"normalized_shape": _attr("normalized_shape"), "eps": _attr("eps"),
                                 "elementwise_affine": _attr("elementwise_affine")}),
    "Linear": (nn.Linear, {"in_features": _attr("in_features"), "out_features": _attr("out_features"),
                           "bias": _has_bias}),
    "ReLU": (nn.ReLU, _INPLACE),
    "ReLU6": (nn.ReLU6, _INPLACE),
    "LeakyReLU": (nn.LeakyReLU, {"negative_slope": _attr("negative_slope"), "inplace": _attr("inplace")}),
    "Hardswish": (nn.Hardswish, _INPLACE),
    "Hardsigmoid": (nn.Hardsigmoid, _INPLACE),
    "SiLU": (nn.SiLU, _INPLACE),
    "GELU": (nn.GELU, {"approximate": _attr("approximate")}),
    "Sigmoid": (nn.Sigmoid, {}),
    "Tanh": (nn.Tanh, {}),
    "Softmax": (nn.Softmax, {"dim": _attr("dim")}),
    "Dropout": (nn.Dropout, {"p": _attr("p"), "inplace": _attr("inplace")}),
    "Dropout2d": (nn.Dropout2d, {"p": _attr("p"), "inplace": _attr("inplace")}),
    "Identity": (nn.Identity, {}),
    "Flatten": (nn.Flatten, {"start_dim": _attr("start_dim"), "end_dim": _attr("end_dim")}),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, {"output_size": _attr("output_size")}),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, {"output_size": _attr("output_size")}),
    "MaxPool2d": (nn.MaxPool2d, {"kernel_size": _attr("kernel_size"), "stride": _attr("stride"),
                                 "padding": _attr("padding"), "dilation": _attr("dilation"),
                                 "ceil_mode": _attr("ceil_mode")}),
    "AvgPool2d": (nn.AvgPool2d, {"kernel_size": _attr("kernel_size"), "stride": _attr("stride"),
                                 "padding": _attr("padding"), "ceil_mode": _attr("ceil_mode"),
                                 "count_include_pad": _attr("count_include_pad"),
                                 "divisor_override": _attr("divisor_override")}),
    "ZeroPad2d": (nn.ZeroPad2d, {"padding": _attr("padding")}),
}

# ------------------------------------------------------------------------------ whitelisted operations
FUNCTIONS: Dict[str, Callable[..., Any]] = {
    "operator.add": operator.add, "operator.sub": operator.sub, "operator.mul": operator.mul,
    "operator.truediv": operator.truediv, "operator.floordiv": operator.floordiv, "operator.neg": operator.neg,
    "operator.getitem": operator.getitem, "operator.matmul": operator.matmul,
    "operator.iadd": operator.iadd, "operator.imul": operator.imul,
    "builtins.getattr": getattr,
    "torch.flatten": torch.flatten, "torch.add": torch.add, "torch.sub": torch.sub, "torch.mul": torch.mul,
    "torch.div": torch.div, "torch.cat": torch.cat, "torch.stack": torch.stack, "torch.relu": torch.relu,
    "torch.sigmoid": torch.sigmoid, "torch.tanh": torch.tanh, "torch.mean": torch.mean, "torch.sum": torch.sum,
    "torch.matmul": torch.matmul, "torch.reshape": torch.reshape, "torch.squeeze": torch.squeeze,
    "torch.unsqueeze": torch.unsqueeze, "torch.transpose": torch.transpose, "torch.permute": torch.permute,
    "torch.chunk": torch.chunk, "torch.split": torch.split, "torch.clamp": torch.clamp,
    "torch.softmax": torch.softmax, "torch.amax": torch.amax,
    "torch.nn.functional.relu": F.relu, "torch.nn.functional.relu6": F.relu6,
    "torch.nn.functional.leaky_relu": F.leaky_relu, "torch.nn.functional.hardsigmoid": F.hardsigmoid,
    "torch.nn.functional.hardswish": F.hardswish, "torch.nn.functional.silu": F.silu,
    "torch.nn.functional.gelu": F.gelu, "torch.nn.functional.sigmoid": torch.sigmoid,
    "torch.nn.functional.adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "torch.nn.functional.adaptive_max_pool2d": F.adaptive_max_pool2d,
    "torch.nn.functional.avg_pool2d": F.avg_pool2d, "torch.nn.functional.max_pool2d": F.max_pool2d,
    "torch.nn.functional.dropout": F.dropout, "torch.nn.functional.interpolate": F.interpolate,
    "torch.nn.functional.softmax": F.softmax, "torch.nn.functional.log_softmax": F.log_softmax,
    "torch.nn.functional.pad": F.pad, "torch.nn.functional.normalize": F.normalize,
}
_FUNCTION_NAMES = {id(f): n for n, f in reversed(list(FUNCTIONS.items()))}
_GETATTR_OK = ("shape", "ndim")  # builtins.getattr may read these attributes only

METHODS = frozenset({
    "flatten", "view", "reshape", "mean", "sum", "size", "dim", "relu", "relu_", "sigmoid", "sigmoid_", "tanh",
    "add", "add_", "sub", "mul", "mul_", "div", "matmul", "permute", "transpose", "contiguous", "squeeze",
    "unsqueeze", "chunk", "split", "clamp", "clamp_", "clamp_min", "expand", "expand_as", "view_as", "softmax",
    "amax", "neg",
})


# ------------------------------------------------------------------------------------------ serialise
def _encode(v: Any, names: Dict[Any, str], where: str, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: arguments nested too deeply")
    if isinstance(v, torch.fx.Node):
        return {"node": names[v]}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{where}: non-finite constant {v}")
        return v
    if isinstance(v, (list, tuple)):
        items = [_encode(a, names, where, depth + 1) for a in v]
        return {"tuple": items} if isinstance(v, tuple) else items
    if isinstance(v, slice):
        return {"slice": [_encode(a, names, where, depth + 1) for a in (v.start, v.stop, v.step)]}
    raise ValueError(f"{where}: argument of type {type(v).__name__} ({str(v)[:60]}) cannot be serialised")


def module_spec(module: nn.Module, where: str = "module") -> Dict[str, Any]:
    """``{"type", "args"}`` of a whitelisted built-in layer (ValueError otherwise)."""
    name = type(module).__name__
    entry = MODULE_TYPES.get(name)
    if entry is None or type(module) is not entry[0]:
        raise ValueError(f"{where} is a {type(module).__module__}.{name}, not one of the built-in layers a device "
                         f"rebuilds ({', '.join(sorted(MODULE_TYPES))})")
    return {"type": name, "args": {k: read(module) for k, read in entry[1].items()}}


def graph_to_spec(gm: torch.fx.GraphModule) -> Dict[str, Any]:
    """The JSON spec of a traced module (ValueError naming the first node that cannot be serialised)."""
    names: Dict[Any, str] = {}
    nodes: List[Dict[str, Any]] = []
    modules: Dict[str, Any] = {}
    attrs: Dict[str, Any] = {}
    for n in gm.graph.nodes:
        names[n] = n.name
        where = f"node {n.name!r}"
        rec: Dict[str, Any] = {"name": n.name, "op": n.op}
        if n.op == "placeholder":
            pass
        elif n.op == "output":
            rec["args"] = [_encode(n.args[0], names, where)]
        elif n.op == "get_attr":
            t = _get_path(gm, n.target)
            if not isinstance(t, Tensor):
                raise ValueError(f"{where} reads {n.target!r}, which is not a tensor")
            attrs[n.target] = {"shape": list(t.shape), "param": isinstance(t, nn.Parameter)}
            rec["target"] = n.target
        else:
            if n.op == "call_module":
                modules[n.target] = module_spec(gm.get_submodule(n.target), f"module {n.target!r}")
                rec["target"] = n.target
            elif n.op == "call_function":
                fname = _FUNCTION_NAMES.get(id(n.target))
                if fname is None:
                    qual = f"{getattr(n.target, '__module__', '?')}.{getattr(n.target, '__name__', n.target)}"
                    raise ValueError(f"{where} calls {qual}, which is not among the operations a device may run "
                                     "(engine/graphspec.py FUNCTIONS)")
                rec["target"] = fname
            elif n.op == "call_method":
                if n.target not in METHODS:
                    raise ValueError(f"{where} calls the tensor method .{n.target}(), which is not among the "
                                     "operations a device may run (engine/graphspec.py METHODS)")
                rec["target"] = n.target
            else:
                raise ValueError(f"{where}: unknown op {n.op!r}")
            rec["args"] = [_encode(a, names, where) for a in n.args]
            rec["kwargs"] = {str(k): _encode(v, names, where) for k, v in n.kwargs.items()}
        nodes.append(rec)
    spec = {"format": GRAPH_FORMAT, "modules": modules, "attrs": attrs, "nodes": nodes}
    check_spec(json.loads(json.dumps(spec)))
    return spec


def graph_tensors(gm: torch.fx.GraphModule, spec: Dict[str, Any]) -> Dict[str, Tensor]:
    """The tensors a :class:`GraphNet` of ``spec`` loads, taken from the traced module ``gm``."""
    out: Dict[str, Tensor] = {}
    for path in spec["modules"]:
        for k, v in gm.get_submodule(path).state_dict().items():
            out[f"{path}.{k}"] = v
    for path in spec["attrs"]:
        out[path] = _get_path(gm, path)
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# -------------------------------------------------------------------------------------------- checks
def _bad(where: str, why: str) -> IntegrityError:
    return IntegrityError(f"{where}: {why}")


def _check_value(v: Any, known: set, where: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise _bad(where, "arguments nested too deeply")
    if v is None or isinstance(v, (bool, int)):
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 1 << 40:
            raise _bad(where, f"integer constant {v} out of range")
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _bad(where, "non-finite constant")
        return
    if isinstance(v, str):
        if len(v) > 64:
            raise _bad(where, "string constant longer than 64 characters")
        return
    if isinstance(v, list):
        if len(v) > 4096:
            raise _bad(where, "argument list too long")
        for a in v:
            _check_value(a, known, where, depth + 1)
        return
    if isinstance(v, dict) and len(v) == 1:
        (k, a), = v.items()
        if k == "node":
            if not isinstance(a, str) or a not in known:
                raise _bad(where, f"refers to {str(a)[:40]!r}, which is not an earlier node")
            return
        if k == "tuple" and isinstance(a, list):
            return _check_value(a, known, where, depth + 1)
        if k == "slice" and isinstance(a, list) and len(a) == 3:
            return _check_value(a, known, where, depth + 1)
    raise _bad(where, f"malformed argument {str(v)[:60]}")


def _ints_ok(v: Any, lo: int, hi: int) -> bool:
    vals = v if isinstance(v, list) else [v]
    return bool(vals) and len(vals) <= 4 and all(isinstance(a, int) and not isinstance(a, bool) and lo <= a <= hi
                                                  for a in vals)


def _module_elements(where: str, typ: str, args: Dict[str, Any]) -> int:
    """Parameter + buffer elements the layer will allocate, from its arguments alone (checked here)."""
    def dim(key: str, lo: int = 1, hi: int = MAX_DIM) -> int:
        v = args.get(key)
        if not _ints_ok(v, lo, hi) or isinstance(v, list):
            raise _bad(where, f"{key} must be an integer in [{lo}, {hi}], got {str(v)[:40]}")
        return int(v)

    def pair(key: str, lo: int, hi: int) -> List[int]:
        v = args.get(key)
        if isinstance(v, str) and key == "padding" and v in ("same", "valid"):
            return [0, 0]
        if not _ints_ok(v, lo, hi):
            raise _bad(where, f"{key} must be integers in [{lo}, {hi}], got {str(v)[:40]}")
        return list(v) if isinstance(v, list) else [v, v]

    for key, v in args.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise _bad(where, f"{key} is not finite")
    if typ in ("Conv2d", "Conv1d"):
        cin, cout, groups = dim("in_channels"), dim("out_channels"), dim("groups")
        k = pair("kernel_size", 1, MAX_KERNEL)
        pair("stride", 1, MAX_KERNEL), pair("padding", 0, MAX_KERNEL), pair("dilation", 1, MAX_KERNEL)
        if cin % groups or cout % groups:
            raise _bad(where, f"channels {cin}/{cout} not divisible by groups {groups}")
        if args.get("padding_mode") not in ("zeros", "reflect", "replicate", "circular"):
            raise _bad(where, "unknown padding_mode")
        n = cout * (cin // groups)
        for v in k:
            n *= v
        return n + cout
    if typ in ("BatchNorm2d", "BatchNorm1d"):
        return 4 * dim("num_features") + 1
    if typ == "GroupNorm":
        c, g = dim("num_channels"), dim("num_groups")
        if c % g:
            raise _bad(where, f"num_channels {c} not divisible by num_groups {g}")
        return 2 * c
    if typ == "LayerNorm":
        shape = pair("normalized_shape", 1, MAX_DIM)
        n = 2
        for v in shape:
            n *= v
        return n
    if typ == "Linear":
        i, o = dim("in_features"), dim("out_features", 0, 1 << 24)
        return i * o + o
    if typ in ("MaxPool2d", "AvgPool2d"):
        pair("kernel_size", 1, MAX_KERNEL)
        if args.get("stride") is not None:
            pair("stride", 1, MAX_KERNEL)
        pair("padding", 0, MAX_KERNEL)
    if typ in ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d"):
        v = args.get("output_size")
        vals = v if isinstance(v, list) else [v]
        if not vals or len(vals) > 2 or any(a is not None and not (isinstance(a, int) and 1 <= a <= MAX_DIM) for a in vals):
            raise _bad(where, f"output_size must be integers in [1, {MAX_DIM}], got {str(v)[:40]}")
    if typ in ("Dropout", "Dropout2d"):
        p = args.get("p")
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise _bad(where, f"p must be in [0, 1], got {str(p)[:40]}")
    return 0


def check_spec(spec: Any, where: str = "graph spec") -> None:
    """Refuse, in one :class:`IntegrityError` line, any spec :class:`GraphNet` must not build."""
    if not isinstance(spec, dict) or spec.get("format") != GRAPH_FORMAT:
        raise _bad(where, f"not a {GRAPH_FORMAT} spec")
    modules, attrs, nodes = spec.get("modules"), spec.get("attrs", {}), spec.get("nodes")
    if not isinstance(modules, dict) or not isinstance(attrs, dict) or not isinstance(nodes, list):
        raise _bad(where, "modules/attrs must be objects and nodes a list")
    if not 2 <= len(nodes) <= MAX_NODES or len(modules) > MAX_NODES or len(attrs) > MAX_NODES:
        raise _bad(where, f"{len(nodes)} nodes / {len(modules)} modules (limit {MAX_NODES})")
    total = 0
    paths = set()
    for path, m in modules.items():
        w = f"{where}: module {str(path)[:60]!r}"
        if not isinstance(path, str) or not _PATH.fullmatch(path):
            raise _bad(w, "not a dotted module path")
        if not isinstance(m, dict) or set(m) != {"type", "args"} or not isinstance(m["args"], dict):
            raise _bad(w, "must be {\"type\", \"args\"}")
        entry = MODULE_TYPES.get(m["type"]) if isinstance(m["type"], str) else None
        if entry is None:
            raise _bad(w, f"type {str(m['type'])[:40]!r} is not a built-in layer a device rebuilds")
        if set(m["args"]) != set(entry[1]):
            raise _bad(w, f"{m['type']} arguments must be exactly {', '.join(sorted(entry[1]))}")
        for k, v in m["args"].items():
            _check_value(v, set(), f"{w} argument {k}")
        total += _module_elements(w, m["type"], m["args"])
        paths.add(path)
    for path, a in attrs.items():
        w = f"{where}: attribute {str(path)[:60]!r}"
        if not isinstance(path, str) or not _PATH.fullmatch(path):
            raise _bad(w, "not a dotted path")
        shape = a.get("shape") if isinstance(a, dict) else None
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape):
            raise _bad(w, "shape must be at most 8 integers in [0, 65536]")
        n = 1
        for d in shape:
            n *= d
        total += n
    if total > MAX_ELEMENTS:
        raise _bad(where, f"{total} parameter elements exceed the limit of {MAX_ELEMENTS}")
    # a module path must not be another's prefix (a leaf cannot hold a child) nor collide with an attribute
    for p in list(paths) + list(attrs):
        parts = p.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[:i]) in paths:
                raise _bad(where, f"{p!r} sits inside the layer {'.'.join(parts[:i])!r}")
    if set(attrs) & paths:
        raise _bad(where, "a path is both a module and an attribute")
    known: set = set()
    placeholders = 0
    for i, n in enumerate(nodes):
        if not isinstance(n, dict):
            raise _bad(where, f"node {i} is not an object")
        name, op = n.get("name"), n.get("op")
        w = f"{where}: node {str(name)[:40]!r}"
        if not isinstance(name, str) or not _IDENT.fullmatch(name) or name in known:
            raise _bad(w, "name must be a new identifier")
        if op == "placeholder":
            placeholders += 1
            if i != 0:
                raise _bad(w, "the input must be the first node")
        elif op == "output":
            if i != len(nodes) - 1:
                raise _bad(w, "output must be the last node")
            args = n.get("args")
            if not isinstance(args, list) or len(args) != 1:
                raise _bad(w, "output takes one argument")
            _check_value(args[0], known, w)
        elif op == "get_attr":
            if n.get("target") not in attrs:
                raise _bad(w, f"reads {str(n.get('target'))[:60]!r}, which is not in attrs")
        elif op in ("call_module", "call_function", "call_method"):
            t = n.get("target")
            if op == "call_module" and t not in modules:
                raise _bad(w, f"calls module {str(t)[:60]!r}, which is not in modules")
            if op == "call_function" and t not in FUNCTIONS:
                raise _bad(w, f"calls {str(t)[:60]!r}, which is not an allowed function")
            if op == "call_method" and t not in METHODS:
                raise _bad(w, f"calls method {str(t)[:60]!r}, which is not an allowed method")
            args, kwargs = n.get("args"), n.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict) or not all(
                    isinstance(k, str) and _IDENT.fullmatch(k) for k in kwargs):
                raise _bad(w, "args must be a list and kwargs an object with identifier keys")
            _check_value(args, known, w)
            _check_value(list(kwargs.values()), known, w)
            if t == "builtins.getattr" and (len(args) != 2 or args[1] not in _GETATTR_OK):
                raise _bad(w, f"getattr may read only {', '.join(_GETATTR_OK)}")
        else:
            raise _bad(w, f"unknown op {str(op)[:40]!r}")
        known.add(name)
    if placeholders != 1 or nodes[-1].get("op") != "output":
        raise _bad(where, "a graph has exactly one input (first node) and one output (last node)")


# ------------------------------------------------------------------------------------------- rebuild
def build_module(spec: Dict[str, Any]) -> nn.Module:
    """A layer from a checked ``{"type", "args"}``."""
    cls = MODULE_TYPES[spec["type"]][0]
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec["args"].items()}
    return cls(**args)


def _install(root: nn.Module, path: str, obj: Any) -> None:
    parts = path.split(".")
    parent = root
    for p in parts[:-1]:
        child = parent._modules.get(p)
        if child is None:
            child = nn.Module()
            parent.add_module(p, child)
        parent = child
    if isinstance(obj, nn.Module):
        parent.add_module(parts[-1], obj)
    elif isinstance(obj, nn.Parameter):
        parent.register_parameter(parts[-1], obj)
    else:
        parent.register_buffer(parts[-1], obj)


class GraphNet(nn.Module):
    """A checked graph spec as a module: its layers at their original paths, its nodes interpreted in order.

    ``forward(x)`` returns the output; ``run(x, keep)`` also returns the values of the nodes named in ``keep``
    (the graph head's taps). Same operations either way, so taps never change the numbers.
    """

    def __init__(self, spec: Dict[str, Any], where: str = "graph spec",
                 overrides: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        super().__init__()
        spec = json.loads(json.dumps(spec))
        for path, args in (overrides or {}).items():  # e.g. the classifier's current out_features
            spec["modules"][path]["args"].update(args)
        check_spec(spec, where)
        self.spec = spec
        for path, m in spec["modules"].items():
            _install(self, path, build_module(m))
        for path, a in spec["attrs"].items():
            t = torch.zeros(a["shape"])
            _install(self, path, nn.Parameter(t, requires_grad=False) if a["param"] else t)
        self._nodes = spec["nodes"]
        self._cache: Dict[str, Any] = {}

    def refresh(self) -> None:
        """Forget resolved layers (call after replacing one, e.g. the classifier)."""
        self._cache = {}

    def _resolve(self, path: str) -> Any:
        got = self._cache.get(path)
        if got is None:
            got = _get_path(self, path)
            if isinstance(got, nn.Module):  # tensors are replaced by .to() and assign-loads: never cached
                self._cache[path] = got
        return got

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x)[0]

    def run(self, x: Tensor, keep: Tuple[str, ...] = ()) -> Tuple[Any, Dict[str, Any]]:
        env: Dict[str, Any] = {}

        def value(a: Any) -> Any:
            if isinstance(a, list):
                return [value(v) for v in a]
            if isinstance(a, dict):
                (k, v), = a.items()
                if k == "node":
                    return env[v]
                if k == "tuple":
                    return tuple(value(i) for i in v)
                return slice(*(value(i) for i in v))
            return a

        out = None
        for n in self._nodes:
            op = n["op"]
            if op == "placeholder":
                env[n["name"]] = x
                continue
            if op == "output":
                out = value(n["args"][0])
                break
            if op == "get_attr":
                env[n["name"]] = self._resolve(n["target"])
                continue
            args = value(n["args"])
            kwargs = {k: value(v) for k, v in n["kwargs"].items()}
            if op == "call_module":
                r = self._resolve(n["target"])(*args, **kwargs)
            elif op == "call_function":
                r = FUNCTIONS[n["target"]](*args, **kwargs)
            else:
                r = getattr(args[0], n["target"])(*args[1:], **kwargs)
            env[n["name"]] = r
        return out, {k: env[k] for k in keep}
