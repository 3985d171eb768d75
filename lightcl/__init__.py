"""lightcl: continual learning at the edge (LightCL, ASP-DAC 2025).

Frozen lower/middle layers run as an optimised feature extractor (onnxruntime, TensorRT); the deep
layers train in PyTorch with a feature-pattern memory that stops forgetting.

The public API is what ``__all__`` lists::

    from lightcl import LightCL, load_extractor, load_head
    learner = LightCL(load_extractor("exports/digits"), load_head("exports/digits"), num_classes=10)

Names are imported on first use (module ``__getattr__``, PEP 562): ``import lightcl`` loads neither
torch nor a runtime, and ``lightcl predict`` on a device imports only what it runs.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # the learner and what it is built from
    "LightCL": "lightcl.engine.learner",
    "LightCLConfig": "lightcl.engine.learner",
    "TaskFree": "lightcl.engine.taskfree",
    "Head": "lightcl.engine.head",
    "load_head": "lightcl.engine.export_dir",
    "load_export_meta": "lightcl.engine.export_dir",
    # extractors: the loader, the template and the registry (docs/backends.md)
    "load_extractor": "lightcl.engine.extractors",
    "Extractor": "lightcl.engine.extractors",
    "register_backend": "lightcl.engine.extractors",
    "backend_names": "lightcl.engine.extractors",
    "options_for": "lightcl.engine.extractors",
    "BaseExtractor": "lightcl.engine.extractors.base",
    "BackendOptions": "lightcl.engine.extractors.base",
    # errors (every one a LightCLError: the CLI prints them as one line)
    "LightCLError": "lightcl.engine.errors",
    "InputError": "lightcl.engine.errors",
    "ShapeError": "lightcl.engine.errors",
    "NonFiniteError": "lightcl.engine.errors",
    "UnknownClassError": "lightcl.engine.errors",
    "UnknownTaskError": "lightcl.engine.errors",
    "StateError": "lightcl.engine.errors",
    "IntegrityError": "lightcl.engine.errors",
    "MissingDependencyError": "lightcl.engine.errors",
    "DatasetNotFoundError": "lightcl.data.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightcl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
