"""lightcl.engine: what runs ON the device.

Extractor backends, the trainable head, the feature-pattern memory, the learner and its state.
Nothing here imports ``lightcl.export`` or ``lightcl.bench``.
"""
from .errors import (
    LightCLError,
    InputError,
    ShapeError,
    NonFiniteError,
    UnknownClassError,
    UnknownTaskError,
    StateError,
    IntegrityError,
    MissingDependencyError,
)

__all__ = [
    "LightCLError",
    "InputError",
    "ShapeError",
    "NonFiniteError",
    "UnknownClassError",
    "UnknownTaskError",
    "StateError",
    "IntegrityError",
    "MissingDependencyError",
]
