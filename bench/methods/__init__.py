"""The benchmark's methods behind one contract (see :mod:`.base`), and their registry.

==================== =========================================================================
``sgd``              fine-tune the whole pretrained model (lower bound)
``joint``            cumulative joint training on every task so far (upper bound)
``ewc``              online EWC (Mammoth's ``ewc_on``)
``lwf``              Learning without Forgetting (Mammoth's loss)
``er``               Experience Replay, reservoir buffer of images
``derpp``            DER++, reservoir buffer of images + logits
``latent-replay``    frozen extractor (the export) + replay of stored frozen features
``lightcl-reference`` the authors' LightCL procedure in plain torch (bench/reference.py)
``lightcl``          the engine: ``load_extractor`` (onnxruntime) + ``LightCL``
``pnn``              Progressive Neural Networks: a column per task + laterals (TIL only)
``fdr``              Function Distance Regularization: buffer of samples + their outputs
``sparcl-er``        SparCL (weights 90% sparse, TDM + DDR + DGM) on ER
``sparcl-derpp``     SparCL on DER++
``lightcl-sparse``   LightCL on a physically pruned export (the paper's sparsity-0.9 row)
``lightcl-replay``   LightCL + the engine's int8 feature-replay memory (2 MiB byte budget)
``lightcl-replay-free`` the same, task-free (no boundaries reach the learner; runs the blurry scenarios)
``remind``           REMIND-style: PQ-compressed frozen features replayed through the head (no penalty)
==================== =========================================================================

A method with ``til_only = True`` (``pnn``) is task-incremental only: its logits are meaningful
inside each task's outputs, and the suite reports its CIL as "n/a". A method with
``wants_ids = True`` (SparCL, for dynamic data removal) gets ``observe(x, y, ids)`` with the
batch's dataset indices.
"""
from __future__ import annotations

import importlib
from typing import Any

from lightcl.engine.errors import InputError, LightCLError

from .base import Method, MethodContext

# name -> (module, class, one line)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "sgd": ("lightcl.bench.methods.sgd", "SGD", "fine-tune the whole pretrained model (lower bound)"),
    "joint": ("lightcl.bench.methods.joint", "Joint", "cumulative joint training (upper bound)"),
    "ewc": ("lightcl.bench.methods.ewc", "EWC", "online EWC (Mammoth ewc_on)"),
    "lwf": ("lightcl.bench.methods.lwf", "LwF", "Learning without Forgetting"),
    "er": ("lightcl.bench.methods.er", "ER", "Experience Replay (reservoir, images)"),
    "derpp": ("lightcl.bench.methods.derpp", "DERpp", "DER++ (reservoir, images + logits)"),
    "latent-replay": ("lightcl.bench.methods.latent_replay", "LatentReplay",
                      "frozen extractor + replay of stored frozen features"),
    "lightcl-reference": ("lightcl.bench.methods.lightcl_reference", "LightCLReference",
                          "the authors' LightCL procedure in plain torch"),
    "lightcl": ("lightcl.bench.methods.lightcl", "LightCLMethod", "the engine (onnxruntime extractor + LightCL)"),
    "pnn": ("lightcl.bench.methods.pnn", "PNN", "Progressive Neural Networks (TIL only; a column per task)"),
    "fdr": ("lightcl.bench.methods.fdr", "FDR", "Function Distance Regularization (buffer + outputs)"),
    "sparcl-er": ("lightcl.bench.methods.sparcl", "SparCLER", "SparCL on ER (90% weight sparsity)"),
    "sparcl-derpp": ("lightcl.bench.methods.sparcl", "SparCLDERpp", "SparCL on DER++ (90% weight sparsity)"),
    "lightcl-sparse": ("lightcl.bench.methods.lightcl_sparse", "LightCLSparse", "LightCL with sparsity 0.9"),
    "lightcl-replay": ("lightcl.bench.methods.lightcl_replay", "LightCLReplay",
                       "LightCL + int8 feature replay under a byte budget"),
    "lightcl-replay-free": ("lightcl.bench.methods.lightcl_replay", "LightCLReplayFree",
                            "LightCL + feature replay, task-free (blurry streams)"),
    "remind": ("lightcl.bench.methods.lightcl_replay", "Remind", "REMIND-style PQ feature replay"),
}
METHODS = list(REGISTRY)
# methods that run the split export through the engine's extractor
ENGINE_METHODS = ("latent-replay", "lightcl", "lightcl-sparse", "lightcl-replay", "lightcl-replay-free", "remind")


class MethodNotBuilt(LightCLError):
    """A registered method whose implementation does not exist yet."""

    exit_code = 2


def method_class(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise InputError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    mod, cls, _ = REGISTRY[name]
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name == mod:
            raise MethodNotBuilt(f"method {name!r}: not built yet") from None
        raise
    return getattr(module, cls)


def is_built(name: str) -> bool:
    try:
        method_class(name)
        return True
    except MethodNotBuilt:
        return False


def create_method(name: str, ctx: MethodContext, **hp: Any) -> Method:
    return method_class(name)(ctx, **hp)


def parse_methods(spec: str | list[str] | None) -> list[str]:
    """``"all"``/None -> every registered method; else a comma list, checked against the registry."""
    if spec is None or spec == "all" or spec == ["all"]:
        return list(METHODS)
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    bad = [m for m in names if m not in REGISTRY]
    if bad:
        raise InputError(f"unknown method(s) {', '.join(bad)}; known: {', '.join(METHODS)}")
    if not names:
        raise InputError("no methods given")
    return list(dict.fromkeys(names))


__all__ = ["REGISTRY", "METHODS", "ENGINE_METHODS", "Method", "MethodContext", "MethodNotBuilt", "create_method",
           "method_class", "is_built", "parse_methods"]
