"""One exception hierarchy, so callers (and the CLI) can catch ``LightCLError`` and print one line."""
from __future__ import annotations


class LightCLError(Exception):
    """Base of every error lightcl raises on purpose. The CLI prints it as one line, exit 1."""

    exit_code = 1


class InputError(LightCLError, ValueError):
    """A caller passed something unusable (wrong type, empty batch, bad option)."""


class ShapeError(InputError):
    """Wrong rank, channel count, image size or dtype."""


class NonFiniteError(InputError):
    """NaN or Inf where finite numbers are required."""


class UnknownClassError(InputError):
    """A label outside the current task's classes."""


class UnknownTaskError(InputError):
    """A task id the learner has never seen."""


class StateError(LightCLError):
    """A state or export directory is missing, incomplete or unreadable."""


class IntegrityError(StateError):
    """A file does not match the sha256 recorded for it, or belongs to another frozen part."""


class MissingDependencyError(LightCLError):
    """An optional runtime (onnxruntime, TensorRT, CUDA) is not installed here."""

    exit_code = 3
