"""What the methods built on the split export share: the extractor and the frozen part's figures."""
from __future__ import annotations

from lightcl.engine.errors import InputError

from .base import MethodContext


def open_extractor(ctx: MethodContext, backend: str | None = None):
    """The export's frozen part as the engine runs it (default: onnxruntime). Each backend takes what its own
    options declare of: the suite's thread count, and no spinning (the head trains in the same process)."""
    from lightcl.engine.extractors import load_extractor, options_for

    if not ctx.export_dir:
        raise InputError("this method needs an export directory (the suite makes one with ensure_export)")
    backend = backend or ctx.backend
    opts = options_for(backend, threads=int(ctx.threads) if ctx.threads else None, spin=False)
    return load_extractor(ctx.export_dir, backend=backend, device=ctx.device, **opts)


def extractor_and_head(method, ctx: MethodContext):
    """The export's frozen part (:func:`open_extractor`) and its head with a fresh classifier, for a method that
    trains the head on frozen features (``latent-replay``, ``remind``); sets ``method.frozen_params`` and declares
    the parts ``frozen`` and ``head``."""
    from lightcl.engine.export_dir import load_head

    extractor = open_extractor(ctx)
    head = load_head(ctx.export_dir).to(method.device)
    head.reset_classifier(ctx.num_classes, generator=method.generator)
    method.frozen_params, f_frozen = frozen_figures(ctx)
    method.declare_part("frozen", per_sample=f_frozen)
    method.declare_part("head", head, head.in_features)
    return extractor, head


def frozen_figures(ctx: MethodContext) -> tuple[int, float]:
    """(parameters, forward FLOPs per sample) of the frozen part; the worker puts them in ``ctx.extra``."""
    return int(ctx.extra.get("frozen_params", 0)), float(ctx.extra.get("frozen_flops", 0.0))


def export_figures(export_dir) -> dict:
    """``{"frozen_params", "frozen_flops"}`` of an export's frozen part, measured on it (what the worker
    measures on the checkpoint's; ``lightcl-sparse`` runs on another export than the suite's)."""
    import torch

    from lightcl.engine.export_dir import export_file, load_export_meta
    from lightcl.engine.frozen import load_frozen

    from .base import forward_flops

    meta = load_export_meta(export_dir)
    net, _ = load_frozen(export_file(export_dir, meta, "frozen.safetensors"))
    shape = tuple(int(v) for v in meta["input_shape"][-3:])
    return {"frozen_params": int(sum(p.numel() for p in net.parameters())),
            "frozen_flops": forward_flops(net, torch.zeros(2, *shape))}
