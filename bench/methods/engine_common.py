"""What the methods built on the split export share: the extractor and the frozen part's figures."""
from __future__ import annotations

from typing import Any

from lightcl.engine.errors import InputError

from .base import MethodContext


def open_extractor(ctx: MethodContext, backend: str | None = None):
    """The export's frozen part as the engine runs it (default: onnxruntime, no spinning)."""
    from lightcl.engine.extractors import load_extractor

    if not ctx.export_dir:
        raise InputError("this method needs an export directory (the suite makes one with ensure_export)")
    backend = backend or ctx.backend
    opts: dict[str, Any] = {}
    if backend in ("ort", "ort-int8"):
        opts["spin"] = False
        if ctx.threads:
            opts["threads"] = int(ctx.threads)
    elif backend == "torch" and ctx.threads:
        opts["threads"] = int(ctx.threads)
    return load_extractor(ctx.export_dir, backend=backend, device=ctx.device, **opts)


def frozen_figures(ctx: MethodContext) -> tuple[int, float]:
    """(parameters, forward FLOPs per sample) of the frozen part; the worker puts them in ``ctx.extra``."""
    return int(ctx.extra.get("frozen_params", 0)), float(ctx.extra.get("frozen_flops", 0.0))
