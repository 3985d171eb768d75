"""lightcl: continual learning at the edge (LightCL, ASP-DAC 2025).

Frozen lower/middle layers run as an optimised feature extractor (onnxruntime, TensorRT); the deep
layers train in PyTorch with a feature-pattern memory that stops forgetting.
"""
from __future__ import annotations

__version__ = "0.1.0"

from lightcl.data.errors import DatasetNotFoundError  # noqa: E402  (the data layer's; cheap, device-safe)
from lightcl.engine.errors import (  # noqa: E402
    InputError,
    IntegrityError,
    LightCLError,
    MissingDependencyError,
    NonFiniteError,
    ShapeError,
    StateError,
    UnknownClassError,
    UnknownTaskError,
)
from lightcl.engine.head import Head  # noqa: E402

__all__ = [
    "__version__", "Head", "LightCLError", "InputError", "ShapeError", "NonFiniteError", "UnknownClassError",
    "UnknownTaskError", "StateError", "IntegrityError", "MissingDependencyError", "DatasetNotFoundError",
]
