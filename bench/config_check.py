"""Ranges of every benchmark hyperparameter, checked when a ``--method-config`` is read (before any work).

The typed configs (``bench/methods/configs.py``) check types; a value of the right type can still make no
sense (er ``buffer_size -5`` ran to exit 0, sgd ``lr -1`` failed inside the run after its work). Every
field of every config class is listed here by name (a field without a range is an error of this table,
caught by tests/test_method_config_ranges.py), and the learner's own options go through
``LightCLConfig.validate`` as the engine checks them. Also the document's other values: ``source`` and
``note`` are short strings, ``version`` a small integer.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from lightcl.engine.errors import InputError

BIG = 1e6
# field -> (low, high, low inclusive, kind); kind "int" needs an integer, "num" any finite number,
# "frac" a list of numbers in [low, high]; None allowed where the config's type is Optional
RANGES: dict[str, tuple[float, float, bool, str]] = {
    "lr": (0.0, 1e3, False, "num"),
    "momentum": (0.0, 1.0, True, "num"),
    "weight_decay": (0.0, BIG, True, "num"),
    "buffer_size": (0, 10_000_000, True, "int"),
    "minibatch_size": (1, 1_000_000, True, "int"),
    "e_lambda": (0.0, 1e9, True, "num"),
    "gamma": (0.0, 1.0, True, "num"),
    "fisher_samples": (1, 10_000_000, True, "int"),
    "alpha": (0.0, BIG, True, "num"),
    "beta": (0.0, BIG, True, "num"),
    "softmax_temp": (0.0, 1e3, False, "num"),
    "sparsity": (0.0, 1.0, False, "num"),  # or "authors" (lightcl-sparse)
    "lower_bound": (0.0, 1.0, True, "frac"),
    "upper_bound": (0.0, 1.0, True, "frac"),
    "bound_points": (0.0, 1.0, True, "frac"),
    "mask_update_every": (0.0, 1.0, False, "num"),
    "sp_lmd": (0.0, BIG, True, "num"),
    "gradient_sparse": (0.0, 1.0, True, "num"),
    "sample_frequency": (1, 1_000_000, True, "int"),
    "remove_fraction": (0.0, 1.0, True, "num"),
    "remove_until": (0.0, 1.0, True, "num"),
    "buffer_weight": (0.0, BIG, True, "num"),
    "ratio": (0.0, 1.0, False, "num"),
    "recover_epochs": (0, 10_000, True, "int"),
    "round_channels": (1, 4096, True, "int"),
    "num_classes": (1, 1 << 31, True, "int"),
    "seed": (0, (1 << 63) - 1, True, "int"),
    "replay_batch": (1, 1_000_000, True, "int"),
    "replay_weight": (0.0, BIG, True, "num"),
    "replay_steps": (0, 1000, True, "int"),
    "replay_pq_subvectors": (0, 1 << 20, True, "int"),
    "refresh_every": (1, 1 << 40, True, "int"),
    "start_lr": (0.0, 1e3, False, "num"),
    "end_lr": (0.0, 1e3, False, "num"),
    "base_lr": (0.0, 1e3, False, "num"),
    "lr_step_size": (1, 1 << 40, True, "int"),
    "replay_samples": (1, 1_000_000, True, "int"),
    "mixup_alpha": (0.0, BIG, True, "num"),
    "crop_scale_min": (0.0, 1.0, False, "num"),
    "codebook_size": (2, 256, True, "int"),
    "channels_per_codebook": (1, 1 << 20, True, "int"),
}
# fields whose value is a choice or a flag: the typed config's own type check is all there is to check
NOT_NUMERIC = {"use_cl_mask", "buffer_policy", "loss_slice", "reset_classifier", "device", "optimizer_step",
               "replay_codec", "replay_budget", "extract_budget", "mixup", "random_resized_crops"}  # the last three: LightCLConfig.validate checks them
SPARSITY_WORDS = ("authors",)
MAX_TEXT = 4000  # characters of a ``source`` or ``note``


def _num(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _in(v: float, lo: float, hi: float, lo_incl: bool) -> bool:
    return (lo <= v if lo_incl else lo < v) and v <= hi


def check_value(method: str, name: str, v: Any) -> None:
    """One hyperparameter's range, or one :class:`InputError` line."""
    if name in NOT_NUMERIC or v is None:
        return
    if name == "sparsity" and isinstance(v, str):
        if v not in SPARSITY_WORDS:
            raise InputError(f"{method}: sparsity must be {' or '.join(map(repr, SPARSITY_WORDS))} or a number in (0, 1), "
                             f"got {v[:40]!r}")
        return
    if name not in RANGES:
        raise InputError(f"{method}: hyperparameter {name} has no documented range (bench/config_check.py)")
    lo, hi, lo_incl, kind = RANGES[name]
    span = f"{'[' if lo_incl else '('}{lo:g}, {hi:g}]"
    if kind == "frac":
        if not isinstance(v, (list, tuple)) or not 0 < len(v) <= 64 or \
                not all(_num(x) and _in(x, lo, hi, lo_incl) for x in v):
            raise InputError(f"{method}: {name} must be a list of numbers in {span}, got {str(v)[:60]}")
        return
    if not _num(v) or (kind == "int" and float(v) != int(v)) or not _in(v, lo, hi, lo_incl):
        what = "an integer" if kind == "int" else "a number"
        raise InputError(f"{method}: {name} must be {what} in {span}, got {str(v)[:60]}")


def check_config(method: str, cfg: Any) -> None:
    """Every field of a built typed config (``make_config``'s result), plus the learner's own validation."""
    for f in dataclasses.fields(cfg):
        check_value(method, f.name, getattr(cfg, f.name))
    validate = getattr(cfg, "validate", None)  # LightCLConfig and its subclasses: the engine's own checks
    if callable(validate):
        validate()


def check_text(where: str, v: Any, optional: bool = True) -> None:
    if v is None and optional:
        return
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise InputError(f"{where} must be a string of at most {MAX_TEXT} characters, got {type(v).__name__}")


def check_document(path: Any, doc: dict) -> None:
    """The values of a config document other than hyperparameters: ``source``/``note`` short strings
    (a deeply nested ``source`` used to pass and fail inside the run), ``version`` a small integer."""
    check_text(f"{path}: source", doc.get("source"))
    check_text(f"{path}: note", doc.get("note"))
    version = doc.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 10**6):
        raise InputError(f"{path}: version must be a small non-negative integer")
    unknown = sorted(set(doc) - {"method", "version", "source", "note", "default", "scenarios"})
    if unknown:
        raise InputError(f"{path}: unknown key(s) {unknown[:5]}; a config holds method, version, source, note, "
                         "default, scenarios")
    for name, entry in (doc.get("scenarios") or {}).items():
        if isinstance(entry, dict):
            check_text(f"{path}: scenarios.{str(name)[:40]}.source", entry.get("source"))


def field_names_without_range(configs: dict) -> list[str]:
    """Config fields this table does not cover (the test keeps this empty)."""
    missing = []
    for cls in configs.values():
        for f in dataclasses.fields(cls):
            if f.name not in RANGES and f.name not in NOT_NUMERIC:
                missing.append(f"{cls.__name__}.{f.name}")
    return missing

