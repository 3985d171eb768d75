"""Import an optional runtime or say, in one line, what to install: one rule for every extra."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError


def require(module: str, *, needed_for: str, install: str) -> ModuleType:
    """``importlib.import_module(module)`` or :class:`MissingDependencyError` (exit 3) naming the fix.

    ``needed_for`` says what asked for it ("the onnxruntime backend"), ``install`` how to get it
    ("pip install 'lightcl[ort]'"). Only ImportError is translated: a broken install raising something
    else is a real bug and surfaces as one.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{needed_for} needs {module.split('.')[0]}, which is not importable here "
                                     f"({e}); {install}") from None
