"""The data layer's errors (a LightCLError, so the CLI prints one line). Python 3.8: the package root
imports this module, and the root is loaded on the device."""
from __future__ import annotations

from lightcl.engine.errors import LightCLError


class DatasetNotFoundError(LightCLError):
    """A dataset could not be found; the message says where we looked and how to get it."""

    exit_code = 2
