"""Continual-learning metrics from the accuracy matrix R[t][i]: they live in :mod:`lightcl.engine.metrics`
(``lightcl learn`` reports them without the benchmark); re-exported here."""
from __future__ import annotations

from lightcl.engine.metrics import backward_transfer, final_average, forgetting, summarize  # noqa: F401
