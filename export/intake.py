"""Any ``nn.Module`` in: split at a named module with ``torch.fx``, serialise both halves as graph specs.

After torchvision's ``create_feature_extractor``: the model is traced symbolically; the *cut* is the value the
named module (``--split layer3``) returns, i.e. the last node traced inside it. The frozen part is every node
the cut depends on; the head is the rest, reading the cut as its input. A value of the frozen side used again
after the cut (a skip connection across it, or the input image itself) cannot be fed to the head, so it is
refused naming the tensor and the node that reads it. Both halves then hold only built-in layers and
whitelisted operations (:mod:`lightcl.engine.graphspec`), so the device rebuilds them with no user code.

LightCL's taps of a graph head are chosen here, where the module tree is known: the output of each
block-level submodule of the head (an indexed child of a ``Sequential``/``ModuleList`` such as ``layer4.0``,
or a top-level child with children of its own), then the logits (docs/learner.md).
"""
from __future__ import annotations

import importlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightcl.engine.errors import InputError
from lightcl.engine.export_dir import EXPORT_FORMAT
from lightcl.engine.graphspec import GraphNet, graph_tensors, graph_to_spec
from lightcl.engine.head import GraphHead

from .artefacts import Build, ExportOptions, Images, options_from, preflight


class IntakeError(InputError):
    """A model that cannot be split or serialised as asked (one line; exit code 2 like any bad input)."""


@dataclass
class Split:
    """The result of :func:`split_module`: both halves as traced modules, and what the export records."""

    frozen: torch.fx.GraphModule
    head: torch.fx.GraphModule
    taps: list[list[str]]
    feature_shape: list[int]
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` with its failure as one line."""
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError, ...
        msg = " ".join(str(e).split())[:240]
        raise IntakeError(f"{type(model).__name__} is not traceable with torch.fx ({type(e).__name__}: {msg}); "
                          "data-dependent control flow in forward() must be removed") from None


def _scope(node: torch.fx.Node) -> list[str]:
    """Module paths the node was traced inside, outermost first (its own target for call_module)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = []
    for k, v in stack.items():
        p = v[0] if isinstance(v, tuple) else k
        paths.append(str(p))
    if node.op == "call_module" and node.target not in paths:
        paths.append(str(node.target))
    return paths


def _in(path: str, scope: str) -> bool:
    return path == scope or path.startswith(scope + ".")


def _names_like(names: list[str], want: str) -> str:
    close = [n for n in names if want.split(".")[0] in n][:6] or names[:8]
    return ", ".join(close)


def _block_of(path: str, modules: dict[str, nn.Module]) -> str | None:
    """The block-level submodule a module path belongs to (None: a top-level leaf, e.g. ``fc``)."""
    parts = path.split(".")
    for i in range(1, len(parts) + 1):
        p = ".".join(parts[:i])
        m = modules.get(p)
        if m is None or not list(m.children()):
            continue
        parent = modules.get(".".join(parts[:i - 1]), None) if i > 1 else None
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            return p
        if i == 1 and not isinstance(m, (nn.Sequential, nn.ModuleList)):
            return p
    return None


def _plain_classifier(model: nn.Module, name: str, fc: nn.Module) -> nn.Module:
    """``model`` itself, or a copy whose classifier is a plain ``nn.Linear`` with the same weights when the named
    classifier is a subclass (timm's ``Linear``): fx traces into a subclass, and a device rebuilds built-in layers
    only. The split's check against the ORIGINAL model refuses a subclass whose forward is not a linear map."""
    if type(fc) is nn.Linear:
        return model
    import copy

    plain = nn.Linear(fc.in_features, fc.out_features, bias=fc.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(fc.weight)
        if fc.bias is not None:
            plain.bias.copy_(fc.bias)
    twin = copy.deepcopy(model)
    parent, _, leaf = name.rpartition(".")
    setattr(twin.get_submodule(parent) if parent else twin, leaf, plain.eval())
    return twin


def split_module(model: nn.Module, split: str, classifier: str, input_shape: tuple[int, ...] | list[int],
                 check: bool = True) -> Split:
    """Split ``model`` after the module named ``split``: ``head(frozen(x)) == model(x)`` in eval mode.

    ``classifier`` names the ``nn.Linear`` producing the logits (the model's output). Raises
    :class:`IntakeError` (one line) for an unknown name, an untraceable model, a skip connection across the
    cut, an operation or layer type a device cannot rebuild, or halves that do not reproduce the model.
    """
    model = model.eval()
    modules = dict(model.named_modules())
    names = [n for n in modules if n]
    if split not in modules or not split:
        raise IntakeError(f"--split {split!r} is not a module of {type(model).__name__} (e.g. {_names_like(names, split)})")
    if classifier not in modules or not classifier:
        raise IntakeError(f"--classifier {classifier!r} is not a module of {type(model).__name__} "
                          f"(e.g. {_names_like(names, classifier)})")
    if not isinstance(modules[classifier], nn.Linear):
        raise IntakeError(f"--classifier {classifier!r} is a {type(modules[classifier]).__name__}; it must be the "
                          "nn.Linear that produces the logits")
    if _in(classifier, split) or _in(split, classifier):
        raise IntakeError(f"--split {split!r} and --classifier {classifier!r} overlap: the classifier must come after the split")
    gm = trace(_plain_classifier(model, classifier, modules[classifier]))
    nodes = list(gm.graph.nodes)
    inside = [n for n in nodes if n.op not in ("placeholder", "output") and any(_in(p, split) for p in _scope(n))]
    if not inside:
        raise IntakeError(f"--split {split!r} is never called in {type(model).__name__}.forward()")
    cut = inside[-1]
    out_node = nodes[-1]
    frozen_set, head_set = _sides(cut, out_node, split)
    if any(n.op == "placeholder" for n in head_set):
        raise IntakeError(f"the model's input is read after the cut at {split!r}; choose another split point")
    if cut not in {a for n in head_set for a in n.all_input_nodes}:
        raise IntakeError(f"the output of {split!r} does not reach the model's output")
    cls_nodes = [n for n in head_set if n.op == "call_module" and n.target == classifier]
    if len(cls_nodes) != 1 or out_node.args[0] is not cls_nodes[0]:
        raise IntakeError(f"the model's output must be what --classifier {classifier!r} returns (it is "
                          f"{getattr(out_node.args[0], 'name', out_node.args[0])!r}); a softmax or other op after "
                          "the classifier cannot be kept")

    fg = torch.fx.Graph()
    env: dict = {}
    for n in nodes:
        if n in frozen_set:
            env[n] = fg.node_copy(n, lambda a: env[a])
    fg.output(env[cut])
    hg = torch.fx.Graph()
    henv: dict = {cut: hg.placeholder("features")}
    for n in nodes:
        if n in head_set and n.op != "output":
            henv[n] = hg.node_copy(n, lambda a: henv[a])
    hg.output(henv[out_node.args[0]])
    frozen_gm = torch.fx.GraphModule(gm, fg, class_name="Frozen")
    head_gm = torch.fx.GraphModule(gm, hg, class_name="Head")

    blocks = _head_blocks(nodes, head_set, henv, modules, classifier)
    # a seeded random batch, not zeros: the check below must see the weights, not only the biases
    x = torch.randn(2, *[int(v) for v in input_shape], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            f = frozen_gm(x)
        except Exception as e:
            raise IntakeError(f"the frozen part fails on input {list(x.shape)} ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]}); check --input-size") from None
    if not isinstance(f, torch.Tensor) or f.dim() != 4:
        raise IntakeError(f"the output of {split!r} must be a [N, C, H, W] feature map, got "
                          f"{list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
    spec_f, spec_h = _spec(frozen_gm, "frozen part"), _spec(head_gm, "head")
    taps = [[b, node] for b, node in blocks.items()]
    sp = Split(frozen_gm, head_gm, taps, [int(v) for v in f.shape[1:]], int(modules[classifier].out_features),
               {"frozen_nodes": len(spec_f["nodes"]), "head_nodes": len(spec_h["nodes"])})
    if check:
        with torch.no_grad():
            ref = model(x)
            got = head_gm(f)
        if not isinstance(ref, torch.Tensor) or not torch.allclose(got, ref, rtol=1e-4, atol=1e-5):
            raise IntakeError("head(frozen(x)) differs from model(x) after the split: the model's forward is not "
                              "a pure function of its input")
    return sp


def _sides(cut: torch.fx.Node, out_node: torch.fx.Node, split: str) -> tuple[set, set]:
    """The frozen side (everything the cut depends on) and the head side (everything the output depends on,
    stopping at the cut); a frozen value read again after the cut (a skip connection across it) is refused."""
    frozen_set: set = set()
    todo = [cut]
    while todo:
        n = todo.pop()
        if n in frozen_set:
            continue
        frozen_set.add(n)
        todo.extend(n.all_input_nodes)
    head_set: set = set()
    todo = [out_node]
    while todo:
        n = todo.pop()
        if n in head_set or n is cut:
            continue
        head_set.add(n)
        for a in n.all_input_nodes:
            if a is not cut and a in frozen_set:
                what = "the input image" if a.op == "placeholder" else f"tensor {a.name!r}"
                raise IntakeError(f"a skip connection crosses the cut after {split!r}: {what} (from the frozen side) "
                                  f"is read by {n.name!r} after the cut; choose a split point between blocks")
            todo.append(a)
    return frozen_set, head_set


def _head_blocks(nodes: list, head_set: set, henv: dict, modules: dict[str, nn.Module], classifier: str
                 ) -> dict[str, str]:
    """LightCL's taps of a graph head: the last node traced inside each block-level submodule of the head
    (block name -> node name in the head's graph), in order."""
    blocks: dict[str, str] = {}
    for n in nodes:
        if n not in head_set or n.op in ("placeholder", "output", "get_attr"):
            continue
        scope = _scope(n)
        b = _block_of(scope[-1], modules) if scope else None
        if b is not None and not _in(classifier, b):
            blocks.pop(b, None)
            blocks[b] = henv[n].name
    return blocks


def _spec(gm: torch.fx.GraphModule, what: str) -> dict:
    try:
        return graph_to_spec(gm)
    except ValueError as e:
        raise IntakeError(f"{what}: {e}") from None


def frozen_net(sp: Split) -> GraphNet:
    """The frozen half as the device rebuilds it (weights copied in)."""
    from lightcl.engine.frozen import GraphFrozenNet

    spec = _spec(sp.frozen, "frozen part")
    net = GraphFrozenNet(spec)
    net.load_state_dict(graph_tensors(sp.frozen, spec), strict=True)
    return net.freeze()


def graph_head(sp: Split, classifier: str) -> GraphHead:
    """The head half as a :class:`GraphHead` (weights copied in)."""
    spec = _spec(sp.head, "head")
    fc = sp.head.get_submodule(classifier)
    config = {"graph": spec, "classifier": classifier, "taps": sp.taps, "in_features": list(sp.feature_shape),
              "num_classes": int(fc.out_features), "feat_dim": int(fc.in_features)}
    GraphHead.check_config(config)
    head = GraphHead(config)
    head.net.load_state_dict(graph_tensors(sp.head, spec), strict=True)
    return head.eval()


# ------------------------------------------------------------------------------------ user code, weights
_FACTORY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def load_factory(spec: str) -> nn.Module:
    """``pkg.module:factory`` -> ``factory()`` (host only: this runs the user's code, by their request)."""
    if not isinstance(spec, str) or not _FACTORY.fullmatch(spec):
        raise IntakeError(f"--model must be 'pkg.module:factory', got {spec!r}")
    mod_name, fn_name = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise IntakeError(f"--model {spec}: cannot import {mod_name} ({e}); is it on PYTHONPATH?") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise IntakeError(f"--model {spec}: {mod_name} has no callable {fn_name!r}")
    model = fn()
    if not isinstance(model, nn.Module):
        raise IntakeError(f"--model {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth``/``.pt`` file (``torch.load(weights_only=True)``: no pickled code
    runs). A dict under ``"state_dict"`` or ``"model"`` is unwrapped; a DataParallel ``module.`` prefix stripped."""
    import os

    if not os.path.isfile(path):
        raise IntakeError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(path)
        except Exception as e:
            raise IntakeError(f"{path} is not a readable safetensors file ({' '.join(str(e).split())[:160]})") from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for a pickle with code; anything else for a damaged file
            text = " ".join(str(e).split())
            hit = re.search(r"(Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+)", text)
            first = f"it refers to {hit.group(0).split()[-1]}" if hit else text[:160]
            raise IntakeError(f"{path} is not a plain weights file that loads with torch.load(weights_only=True): "
                              f"it holds pickled code or is damaged ({first}); nothing in it was run") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                     for k, v in sd.items()):
        raise IntakeError(f"{path} does not hold a state dict (name -> tensor)")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with the first missing/unexpected/mis-shaped keys as one line."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''} ({len(unexpected)})")
        raise IntakeError(f"{where}: keys do not match the model: {'; '.join(parts)}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise IntakeError(f"{where}: {k} has shape {list(v.shape)}, the model's is {list(want[k].shape)}")
    model.load_state_dict({k: v.to(want[k].dtype) for k, v in sd.items()}, strict=True)


# ------------------------------------------------------------------------------------- images, resize
def default_resize(input_shape: tuple[int, ...] | list[int]) -> dict[str, Any]:
    """torchvision's eval transform: shorter side to ``round(min(H, W) / 0.875)`` (256 for 224), centre crop."""
    from lightcl.engine.preprocess import resize_rule

    return resize_rule({"rule": "shorter-side-center-crop"}, list(input_shape))


def check_resize(resize: Any, input_shape: tuple[int, ...] | list[int]) -> dict[str, Any]:
    """``resize`` checked and completed by the device's own rule (:func:`lightcl.engine.preprocess.resize_rule`)."""
    from lightcl.engine.preprocess import resize_rule

    return resize_rule(resize, list(input_shape))


def parse_resize(text: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """CLI ``--resize``: ``crop`` (default S), ``crop:S``, ``stretch`` or ``pad``."""
    t = text.strip().lower()
    if t in ("crop", "shorter-side-center-crop"):
        return default_resize(input_shape)
    if t.startswith("crop:"):
        try:
            return check_resize({"rule": "shorter-side-center-crop", "shorter_side": int(t[5:])}, input_shape)
        except ValueError:
            pass
    if t == "stretch":
        return {"rule": "stretch"}
    if t == "pad":
        return {"rule": "pad", "fill": 0}
    raise IntakeError(f"--resize must be crop, crop:S (shorter side S), stretch or pad; got {text!r}")


def prepare(x: torch.Tensor, input_shape: tuple[int, ...], resize: dict[str, Any], mean: list[float],
            std: list[float]) -> torch.Tensor:
    """Raw uint8 images (any size, 1 or 3 channels) -> the normalised float batch the model takes, by the
    export's own rule (:func:`lightcl.engine.preprocess.resize_to_input`, the same code the device runs)."""
    from lightcl.engine.preprocess import normalize, resize_to_input

    if x.dtype != torch.uint8 or x.dim() != 4:
        raise IntakeError(f"images must be uint8 [N, C, H, W], got {x.dtype} {list(x.shape)}")
    x = resize_to_input(x.contiguous(), tuple(int(v) for v in input_shape), resize)
    return normalize(x.float().div(255.0), list(mean), list(std))


def read_folder(path: str, split: str, input_shape: tuple[int, ...], resize: dict[str, Any]):
    """A class-per-subfolder folder as (uint8 [N, C, H, W] at the model's size by its rule, labels, class names)."""
    from lightcl.data.datasets import load_folder
    from lightcl.engine.preprocess import match_channels, to_tensor_uint8

    ds = load_folder(path, split, size=[int(v) for v in input_shape], resize=resize)
    x = match_channels(to_tensor_uint8(ds.x), int(input_shape[0]))
    return x, torch.from_numpy(ds.y.astype("int64")), list(ds.classes)


# ------------------------------------------------------------------------------------------- the export
HELDOUT = 1024  # held-out images for the accuracy figures (all of a smaller test split)


def _labels_for(folder_classes: list[str], class_names: list[str] | None, num_classes: int, y: torch.Tensor):
    """Folder labels as indices of the model's outputs: by name when ``class_names`` holds every folder class,
    else the folder's alphabetical order (torchvision ImageFolder's) when it has exactly ``num_classes``
    classes; otherwise None (parity reports agreement only)."""
    if class_names and all(c in class_names for c in folder_classes):
        lut = torch.tensor([class_names.index(c) for c in folder_classes])
        return lut[y], "by class name"
    if len(folder_classes) == num_classes:
        return y, "folder order (alphabetical, as torchvision's ImageFolder)"
    return None, None


MODULE_KEYWORDS = ("int8", "profile", "atol", "calib_size", "min_agreement", "force", "int8_options", "progress")
"""The flat keywords :func:`export_module` takes besides ``options`` (as it always has)."""


def export_module(model: nn.Module, out_dir: str | Path, *, split: str, classifier: str,
                  input_shape: tuple[int, int, int] | list[int], mean: list[float], std: list[float],
                  resize: dict[str, Any] | None = None, class_names: list[str] | None = None,
                  images: Any = None, labels: torch.Tensor | None = None, model_info: dict[str, Any] | None = None,
                  options: ExportOptions | None = None, **kw: Any) -> dict[str, Any]:
    """Export any ``nn.Module`` (eval mode) split after the module ``split``; return the export's meta.

    ``images``: a class-per-subfolder folder (its test split for parity and accuracy, its train split for int8
    calibration) or a uint8 ``[N, C, h, w]`` tensor of raw images (any size: brought to ``input_shape`` by
    ``resize``), with ``labels`` (indices of the model's outputs) optional. ``resize`` defaults to torchvision's
    shorter-side resize + centre crop. ``mean``/``std`` in [0, 1] units, one per input channel. Writes the same
    directory as ``lightcl export CKPT`` (frozen.onnx, frozen.safetensors with a graph spec, head.safetensors with a
    graph head, meta.json), atomically; parity at the model's own input size, relative to the features' scale:
    ``atol * max(1, max |feature|)`` (a trained network's features reach tens; fp32 rounding grows with them).
    The artefacts: ``options`` (:class:`~lightcl.export.artefacts.ExportOptions`; no pruning, no ``data_path``) or
    the keywords of :data:`MODULE_KEYWORDS` (``int8``, ``profile``, ``atol``, ``calib_size`` (256), ...).
    A TensorRT plan (``options.tensorrt``) goes through the same registry; it was never built here (no GPU).
    """
    from lightcl.engine.extractors.ort_backend import import_onnxruntime

    from . import onnx_export as ox

    opts = _module_options(options, kw)
    say = ox._progress(opts.progress)
    shape, mean, std, resize = _check_inputs(input_shape, mean, std, resize)
    if images is None:
        raise IntakeError("parity and calibration need real images: pass images= (a class-per-subfolder folder or "
                          "a uint8 [N, C, H, W] tensor)")
    plan = opts.kinds()
    chosen = preflight(plan)  # a missing runtime fails before any work (exit 3)
    import_onnxruntime()  # parity needs it: fail fast with exit 3
    out = Path(out_dir).absolute()
    ox._check_out_dir(out)
    t_start = time.perf_counter()
    ox._check_finite_weights(model, type(model).__name__)
    model = model.eval()
    sp = split_module(model, split, classifier, shape)
    frozen_dev, head = frozen_net(sp), graph_head(sp, classifier)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != sp.num_classes:
            raise IntakeError(f"{len(class_names)} class names for a classifier with {sp.num_classes} outputs")
    im, class_names, label_rule = _module_images(images, labels, shape, resize, mean, std, class_names, sp, say)

    info = {"intake": "module", "arch": None, "factory": None, **(model_info or {}), "split": split,
            "classifier": classifier}
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "arch": info.get("arch") or type(model).__name__, "width": None, "split": split,
        "input_shape": list(shape), "feature_shape": list(sp.feature_shape),
        "normalization": {"mean": mean, "std": std, "scale": "0-1"},
        "resize": resize, "num_classes": sp.num_classes, "model": info,
        "head_taps": [t for t, _ in sp.taps] + ["logits"], "graph": sp.info,
        "profile": opts.onnx.profile, "versions": ox._versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if class_names is not None:
        meta["class_names"] = class_names
    b = Build(out, meta, im, say, opts.progress, frozen=sp.frozen, head=head, device_frozen=frozen_dev,
              input_shape=shape, frozen_extra={"split": split, "classifier": classifier})
    return ox.write_export(b, chosen, plan, t_start=t_start,
                           before_meta=_accuracy_figures(model, head, im, label_rule, say))


def _module_options(options: ExportOptions | None, kw: dict[str, Any]) -> ExportOptions:
    """The artefacts of a module export, checked (parity relative to the features' scale); bad values are
    :class:`IntakeError` like every other refusal of this intake."""
    unknown = [k for k in kw if k not in MODULE_KEYWORDS]
    if unknown:
        raise TypeError(f"export_module() got an unexpected keyword argument {unknown[0]!r}")
    from .onnx_export import check_options

    try:
        opts = options_from(options, kw, "export_module")
        if opts.prune is not None or opts.data_path is not None:
            raise IntakeError("pruning and data_path apply to lightcl checkpoints only, not to export_module")
        opts.onnx.relative_atol = True
        return check_options(opts)
    except InputError as e:
        if isinstance(e, IntakeError):
            raise
        raise IntakeError(str(e)) from None


def _check_inputs(input_shape, mean, std, resize) -> tuple[tuple[int, ...], list[float], list[float], dict[str, Any]]:
    """The model's input shape, normalisation and resize rule, checked (one line each)."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or not all(0 < v <= 1 << 14 for v in shape):
        raise IntakeError(f"input_shape must be [C, H, W] of positive integers, got {list(input_shape)}")
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != shape[0] or len(std) != shape[0] or any(s <= 0 for s in std):
        raise IntakeError(f"mean and std need {shape[0]} values each (std > 0), got {mean} / {std}")
    return shape, mean, std, check_resize(default_resize(shape) if resize is None else resize, shape)


def _module_images(images, labels, shape, resize, mean, std, class_names, sp: Split, say) -> tuple[Images, Any, Any]:
    """The parity / held-out / calibration images of a module export, from a folder or a uint8 tensor; with the
    class names (a folder's, when the model has none) and how labels were matched (None: agreement only)."""
    from . import onnx_export as ox

    label_rule = "given" if labels is not None else None
    if isinstance(images, (str, Path)):
        say(f"reading images from {images} at {shape[1]}x{shape[2]} ({resize['rule']})")
        x_raw, y_raw, folder_classes = read_folder(str(images), "test", shape, resize)
        labels, label_rule = _labels_for(folder_classes, class_names, sp.num_classes, y_raw)
        if class_names is None and label_rule is not None:
            class_names = list(folder_classes)
        x_test = prepare(x_raw, shape, resize, mean, std)
        desc = f"{images} (test split), {{n}} images"

        def calib(n: int) -> torch.Tensor:
            xc, _, _ = read_folder(str(images), "train", shape, resize)
            idx = torch.randperm(xc.shape[0], generator=torch.Generator().manual_seed(2))[:n]
            return prepare(xc[idx], shape, resize, mean, std)
        calib_desc = f"{images} (train split), {{n}} images (seed 2)"
    else:
        if not isinstance(images, torch.Tensor):
            raise IntakeError(f"images must be a folder path or a uint8 tensor, got {type(images).__name__}")
        x_test = prepare(images, shape, resize, mean, std)
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (x_test.shape[0],) or bool(((labels < 0) | (labels >= sp.num_classes)).any()):
                raise IntakeError(f"labels must be {x_test.shape[0]} indices in [0, {sp.num_classes})")
        desc = "the given images, {n}"
        x_all = x_test

        def calib(n: int) -> torch.Tensor:
            return x_all[:n]
        calib_desc = "the given images, first {n}"
    if x_test.shape[0] == 0:
        raise IntakeError("no images to check the export on")
    n = min(HELDOUT, x_test.shape[0])
    x_test = x_test[:n]
    y_test = labels[:n] if labels is not None else None
    x_par, y_par = x_test[:ox.PARITY_BATCH], (y_test[:ox.PARITY_BATCH] if y_test is not None else None)
    im = Images(calib, calib_desc, x_par, y_par, x_test, y_test, desc.format(n=x_par.shape[0]), desc.format(n=n))
    return im, class_names, label_rule


def _accuracy_figures(model: nn.Module, head: nn.Module, im: Images, label_rule, say):
    """``before_meta`` of a module export: the whole model in torch vs the export (onnxruntime + head) on every
    held-out image, when they carry labels of the model's classes."""
    from . import onnx_export as ox

    def accuracy(tmp: Path, meta: dict[str, Any]) -> None:
        x_test, y_test = im.x_test, im.y_test
        if y_test is None:
            return
        n = x_test.shape[0]
        sess = ox.ort_session(tmp / "frozen.onnx")
        with torch.no_grad():
            ref = torch.cat([model(x_test[i:i + 64]) for i in range(0, n, 64)]).argmax(1)
            got = head(ox.run_session(sess, x_test, batch=64)).argmax(1)
        meta["accuracy"] = {"images": im.heldout_desc, "labels": label_rule,
                            "torch": float((ref == y_test).float().mean()),
                            "export": float((got == y_test).float().mean()),
                            "agreement": float((ref == got).float().mean())}
        if "int8" in meta:
            gi = head(ox.run_session(ox.ort_session(tmp / "frozen.int8.onnx"), x_test, batch=64)).argmax(1)
            meta["accuracy"]["export_int8"] = float((gi == y_test).float().mean())
        say(f"accuracy on {n} held-out images: torch {meta['accuracy']['torch']:.4f}, "
            f"export {meta['accuracy']['export']:.4f}")

    return accuracy


# ------------------------------------------------------------------------------------- the CLI's intakes
def _torchvision_module():
    try:
        from . import torchvision_models  # helper B's module (CONTRACT.md)
    except ImportError:
        raise IntakeError("torchvision-keyed families need lightcl.export.torchvision_models, which this install "
                          "lacks") from None
    return torchvision_models


def export_torchvision(weights: str, out_dir: str | Path, *, arch: str, input_shape: tuple[int, ...] | None = None,
                       split: str | None = None, mean: list[float] | None = None, std: list[float] | None = None,
                       resize: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """A torchvision-keyed weights file (``.pth`` / ``.safetensors``, torchvision's own keys) of family ``arch``
    (``tv_resnet18``, ...). ``num_classes`` comes from the classifier's weight; input size, mean/std, split and
    classifier default to the family's entry (224, ImageNet statistics)."""
    tv = _torchvision_module()
    try:
        entry = tv.torchvision_entry(arch)
    except (KeyError, ValueError, LookupError) as e:
        raise IntakeError(str(e).strip("'\"")) from None
    sd = read_state_dict(weights)
    w = sd.get(entry.classifier + ".weight")
    if w is None or w.dim() != 2:
        raise IntakeError(f"{weights}: no classifier weight {entry.classifier}.weight, so this is not a "
                          f"torchvision {entry.torchvision_name or arch} state dict")
    with torch.random.fork_rng(devices=[]):  # the init is overwritten by the file: leave the caller's RNG alone
        model = tv.create_torchvision_model(arch, num_classes=int(w.shape[0]))
    load_weights(model, sd, weights)
    shape = tuple(input_shape) if input_shape else tuple(entry.input_size)
    return export_module(model, out_dir, split=split or entry.default_split, classifier=entry.classifier,
                         input_shape=shape, mean=list(mean or entry.mean), std=list(std or entry.std), resize=resize,
                         model_info={"intake": "torchvision", "arch": arch, "factory": None,
                                     "weights_sha256": _sha(weights)}, **kw)


def export_factory(factory: str, out_dir: str | Path, *, weights: str | None = None, **kw: Any) -> dict[str, Any]:
    """User code by import path (``pkg.module:factory``, called with no arguments), weights optionally from a
    ``.pth``/``.safetensors`` file; the rest as :func:`export_module`."""
    model = load_factory(factory)
    info: dict[str, Any] = {"intake": "module", "arch": None, "factory": factory}
    if weights is not None:
        load_weights(model, read_state_dict(weights), weights)
        info["weights_sha256"] = _sha(weights)
    return export_module(model, out_dir, model_info=info, **kw)


def _sha(path: str) -> str:
    from lightcl.engine.fileio import sha256_file

    return sha256_file(path)
