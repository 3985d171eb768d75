"""Extractor backends by name: the built-ins are declared here and imported on first use, others are added
with :func:`register_backend`.

Importing this module imports neither torch nor any runtime, so a command line can offer the names as
``--backend`` choices without loading them.
"""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import InputError

AUTO = "auto"
#: what ``backend="auto"`` ends with when nothing ranked before it works (it always can: torch is a dependency)
FALLBACK = "torch"

# name -> "module:Class" (relative to this package), in the order docs and --help list them
_BUILTIN: dict[str, str] = {
    "torch": ".torch_backend:TorchExtractor",
    "ort": ".ort_backend:OrtExtractor",
    "ort-int8": ".ort_backend:OrtInt8Extractor",
    "tensorrt": ".tensorrt_backend:TensorRTExtractor",
}
_CLASSES: dict[str, Any] = {}
_ADDED: list[str] = []


def backend_names() -> tuple[str, ...]:
    """Every registered backend (built-ins first), without importing any of them; ``"auto"`` not included."""
    return (*_BUILTIN, *(n for n in _ADDED if n not in _BUILTIN))


def choices() -> tuple[str, ...]:
    """What ``backend=`` accepts: ``"auto"`` and every registered backend."""
    return (AUTO, *backend_names())


def check_name(name: Any) -> str:
    if name not in choices():
        raise InputError(f"unknown extractor backend {name!r}; choose from {', '.join(choices())}")
    return name


def get_backend(name: str):
    """The backend class registered as ``name`` (imported now if it is a built-in not yet used)."""
    if name == AUTO:
        raise InputError("'auto' is a choice among backends, not a backend: use load_extractor(..., backend='auto')")
    check_name(name)
    cls = _CLASSES.get(name)
    if cls is None:
        module, _, attr = _BUILTIN[name].partition(":")
        cls = getattr(importlib.import_module(module, __package__), attr)
        _CLASSES[name] = cls
    return cls


def backend_classes() -> dict[str, Any]:
    """name -> class for every registered backend (imports the built-ins; not their runtimes)."""
    return {n: get_backend(n) for n in backend_names()}


def register_backend(cls, *, replace: bool = False):
    """Add a :class:`~lightcl.engine.extractors.base.BaseExtractor` subclass under ``cls.name``; returns it,
    so it works as a class decorator. Refuses what the template cannot run: no name, ``"auto"``, options
    that are not a :class:`~lightcl.engine.extractors.base.BackendOptions` dataclass, no ``_open``/``_run``,
    or a name already taken (unless ``replace=True``)."""
    import dataclasses

    from .base import BackendOptions, BaseExtractor

    if not (isinstance(cls, type) and issubclass(cls, BaseExtractor)):
        raise InputError(f"register_backend takes a BaseExtractor subclass, got {cls!r}")
    name = cls.name
    if not isinstance(name, str) or not name or name == AUTO or name != name.strip():
        raise InputError(f"{cls.__name__}.name must be a non-empty backend name other than 'auto', got {name!r}")
    opts = cls.Options
    if not (isinstance(opts, type) and issubclass(opts, BackendOptions) and dataclasses.is_dataclass(opts)):
        raise InputError(f"{cls.__name__}.Options must be a dataclass subclass of BackendOptions")
    for method in ("_open", "_run"):
        if getattr(cls, method) is getattr(BaseExtractor, method):
            raise InputError(f"{cls.__name__} does not implement {method}")
    if name in backend_names() and not replace:
        raise InputError(f"an extractor backend named {name!r} is already registered (pass replace=True)")
    _CLASSES[name] = cls
    if name not in _BUILTIN and name not in _ADDED:
        _ADDED.append(name)
    return cls


def unregister_backend(name: str) -> None:
    """Remove a backend added with :func:`register_backend` (built-ins stay: a replaced one is restored)."""
    if name not in _ADDED and name not in _BUILTIN:
        raise InputError(f"no extractor backend named {name!r} is registered")
    _CLASSES.pop(name, None)
    if name in _ADDED:
        _ADDED.remove(name)
