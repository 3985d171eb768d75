"""The benchmark's methods behind one template (see :mod:`.base`), and their registry.

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
==================== =========================================================================

Every module of this package is imported here, and each method class registers itself with
``@register_method`` (timm-style): adding a method is one file in this folder (docs/extending.md).
What a method can do is declared on its class (``til_only``, ``wants_fresh_batch``, ``wants_ids``,
``needs_export``), not guessed by the suite.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from lightcl.engine.errors import InputError, LightCLError

from .base import REGISTRY, Method, MethodContext, Step, register_method

# The report order of the paper's Table 1 rows; a registered method not listed here follows, by name.
TABLE_ORDER = ("sgd", "joint", "ewc", "lwf", "er", "derpp", "latent-replay", "lightcl-reference", "lightcl", "pnn",
               "fdr", "sparcl-er", "sparcl-derpp", "lightcl-sparse", "lightcl-replay", "lightcl-replay-free", "remind")
_SUPPORT = {"base", "classes", "configs", "engine_common"}  # modules of this package that hold no method


def _import_methods() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SUPPORT:
            importlib.import_module(f"{__name__}.{info.name}")


_import_methods()
METHODS = [m for m in TABLE_ORDER if m in REGISTRY] + sorted(m for m in REGISTRY if m not in TABLE_ORDER)
# methods that run the split export through the engine's extractor
ENGINE_METHODS = tuple(m for m in METHODS if REGISTRY[m].needs_export)


class MethodNotBuilt(LightCLError):
    """A method name the registry does not hold (kept for the suite's ``nothing to run`` line)."""

    exit_code = 2


def method_class(name: str) -> type[Method]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def is_built(name: str) -> bool:
    """Whether ``name`` is a registered method (every registered method is built)."""
    return name in REGISTRY


def config_class(name: str) -> type:
    """The typed hyperparameters ``name`` declares (``Method.config_class``)."""
    return method_class(name).config_class


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


__all__ = ["REGISTRY", "METHODS", "TABLE_ORDER", "ENGINE_METHODS", "Method", "MethodContext", "MethodNotBuilt", "Step",
           "config_class", "create_method", "method_class", "is_built", "parse_methods", "register_method"]
