"""``lightcl-sparse``: the paper's "LightCL (sparsity 0.9)" row, with the pruning made physical.

The authors (github INV-WZQ/LightCL @ 62fda8b7, ``LightCL.py --Sparse``, ``prune.py ChannelPruner``)
mask channels of a dense model and re-apply the masks after every step. Here the checkpoint is
pruned once at export time (:mod:`lightcl.export.prune`, ``sparsity="authors"`` by default: their
per-stage ratios and signed-mean importance), fine-tuned ``recover_epochs`` on its pretraining
data, exported, and the engine learns on that smaller export exactly as ``lightcl`` does on the
dense one (same learner, same defaults): no masks, no special case.

The pruned export is made on first use and cached next to the suite's dense export
(``$LIGHTCL_CACHE/exports/<ckpt>-<split>-sparse-<sparsity>-r<epochs>``), keyed by the checkpoint's
sha256; the suite builds it before its workers start (``prepare``), so no worker meters the build.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from lightcl.engine.errors import LightCLError

from .base import register_method
from .configs import LightCLSparseConfig
from .engine_common import export_figures
from .lightcl import LightCLMethod


def ensure_sparse_export(ckpt: str | Path, split: str, sparsity, recover_epochs: int, progress: bool = False,
                         round_channels: int | None = None) -> Path:
    """The pruned export of ``ckpt`` (cached; rebuilt when the checkpoint or the pruning changed).
    ``round_channels``: kept channel counts rounded to a multiple of it (``lightcl export --round-channels``)."""
    from lightcl.engine.paths import cache_dir
    from lightcl.engine.export_dir import load_export_meta
    from lightcl.engine.fileio import read_json
    from lightcl.export.checkpoint import checkpoint_paths
    from lightcl.export.onnx_export import export_checkpoint
    from lightcl.export.prune import RECOVER_SCHEDULE, parse_round_channels, parse_sparsity

    sparsity = parse_sparsity(sparsity)
    round_channels = parse_round_channels(round_channels)
    ckpt = Path(ckpt)
    want_sha = read_json(checkpoint_paths(ckpt)[1], "checkpoint metadata").get("sha256")
    rounded = f"-c{round_channels}" if round_channels else ""
    out = cache_dir() / "exports" / f"{ckpt.name}-{split}-sparse-{sparsity}{rounded}-r{int(recover_epochs)}"
    try:
        meta = load_export_meta(out)
        sp = meta.get("sparsity") or {}
        if (meta["checkpoint"]["weights_sha256"] == want_sha and meta["split"] == split
                and (sp.get("mode") == "authors") == (sparsity == "authors")
                and (sparsity == "authors" or sp.get("target") == sparsity)
                and (sp.get("recovery") or {}).get("epochs") == int(recover_epochs)
                # an export recovered with another schedule (before the cosine one: none recorded) is rebuilt
                and (int(recover_epochs) == 0 or (sp.get("recovery") or {}).get("schedule") == RECOVER_SCHEDULE)
                and sp.get("round_channels") == round_channels):
            return out
    except (LightCLError, KeyError, TypeError):
        pass
    export_checkpoint(ckpt, out, split=split, progress=progress, sparsity=sparsity, recover_epochs=recover_epochs,
                      round_channels=round_channels)
    return out


@register_method
class LightCLSparse(LightCLMethod):
    """:class:`LightCLMethod` on the pruned export; its config: the learner's options + the pruning's."""

    name = "lightcl-sparse"
    summary = "LightCL with sparsity 0.9"
    config_class = LightCLSparseConfig
    trains = "pruned head (deep layers + classifier)"
    cost = 0.15

    @classmethod
    def not_applicable(cls, model) -> str | None:
        """The structured pruner's refusal (a block type whose channel graph it does not know, e.g. the
        inverted residual), as a reason: the suite records it and runs the other methods."""
        from lightcl.export.prune import PruneError, channel_groups

        try:
            channel_groups(model)
        except PruneError as e:
            return str(e)
        return None

    @classmethod
    def prepare(cls, ckpt: str, split: str, hyperparameters: dict, echo=print, progress: bool = False) -> Path:
        """Build (or find cached) the pruned export before the suite's workers start."""
        sparsity = hyperparameters.get("sparsity", "authors")
        recover_epochs = int(hyperparameters.get("recover_epochs", 2))
        round_channels = hyperparameters.get("round_channels")
        rounded = f", channels rounded to multiples of {round_channels}" if round_channels else ""
        echo(f"lightcl-sparse: pruned export (sparsity {sparsity}{rounded}, {recover_epochs} recovery epochs; "
             "cached) ...")
        return ensure_sparse_export(ckpt, split, sparsity, recover_epochs, progress=progress,
                                    round_channels=round_channels)

    def __init__(self, ctx, **hp) -> None:
        from lightcl.engine.export_dir import load_export_meta

        sparsity = hp.pop("sparsity", "authors")
        recover_epochs = int(hp.pop("recover_epochs", 2))
        round_channels = hp.pop("round_channels", None)
        out = ensure_sparse_export(ctx.ckpt, ctx.scenario.split, sparsity, recover_epochs, round_channels=round_channels)
        meta = load_export_meta(out)
        figures = {**ctx.extra, **export_figures(out)}  # the pruned frozen part's, not the suite's dense one
        self.sparse_meta = meta["sparsity"]
        self.sparse_options = {"sparsity": sparsity, "recover_epochs": recover_epochs, "round_channels": round_channels}
        super().__init__(dataclasses.replace(ctx, export_dir=str(out), extra=figures), **hp)

    def describe(self) -> dict:
        d = super().describe()
        d["hyperparameters"] = {**d["hyperparameters"], **self.sparse_options}
        sp = self.sparse_meta
        d["sparsity"] = {k: sp.get(k) for k in ("mode", "target", "weight_sparsity", "params_kept", "params_dense",
                                                "params_kept_fraction", "recovery", "test_accuracy_dense",
                                                "round_channels")}
        return d
