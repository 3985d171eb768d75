"""Compatibility: the stream loop moved to :mod:`lightcl.data.stream` (``lightcl learn`` runs it without
importing the benchmark). :func:`learn_scenario` keeps its old signature and runs
:func:`lightcl.data.stream.learn_stream` on a scenario."""
from __future__ import annotations

from lightcl.data.stream import ScenarioData, format_matrix, learn_scenario

__all__ = ["ScenarioData", "format_matrix", "learn_scenario"]
