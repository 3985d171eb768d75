"""One typed config per benchmark method: the single source of its hyperparameter defaults.

Each method reads its defaults from its dataclass here (``Method.config``); the cited JSON files in
``bench/configs/METHOD.json`` repeat the same values beside their source, and
``tests/test_method_configs.py`` fails when a JSON default and the dataclass disagree. A JSON
``scenarios`` entry is an explicit, cited override for one scenario. The defaults are the values
of each method's cited source for the main benchmark's settings (Mammoth ``utils/best_args.py``
seq-cifar10, aimagelab/mammoth @ e75a491c; the SparCL authors' script; the LightCL authors' code,
which is also ``lightcl.engine.learner.LightCLConfig``'s). ``buffer_size`` 15 is the LightCL
paper's Table 1 setting for every replay method.

Each method names its class (``Method.config_class``); a method of your own may define its config in
its own file. ``lightcl`` uses the engine's own :class:`~lightcl.engine.learner.LightCLConfig` (the learner's
options), so the engine and the benchmark cannot drift apart.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from lightcl.engine.errors import InputError
from lightcl.engine.learner import LightCLConfig

_LC = LightCLConfig()


@dataclass
class WholeModelConfig:
    """SGD on the whole model (Mammoth's baselines): ``lr``, ``momentum``, ``weight_decay``."""

    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class SGDConfig(WholeModelConfig):
    """Mammoth seq-cifar10 'sgd': lr 0.1."""

    lr: float = 0.1


@dataclass
class JointConfig(WholeModelConfig):
    """Mammoth's joint reuses the sequential baseline's optimiser: seq-cifar10 'sgd' lr 0.1."""

    lr: float = 0.1


@dataclass
class EWCConfig(WholeModelConfig):
    """Mammoth seq-cifar10 'ewc_on': lr 0.03, e_lambda 10, gamma 1; ``fisher_samples`` is ours."""

    lr: float = 0.03
    e_lambda: float = 10.0
    gamma: float = 1.0
    fisher_samples: int = 256


@dataclass
class LwFConfig(WholeModelConfig):
    """Mammoth seq-cifar10 'lwf': lr 0.01, alpha 3.0, softmax_temp 2.0, optim_wd 0.0005."""

    lr: float = 0.01
    weight_decay: float = 0.0005
    alpha: float = 3.0
    softmax_temp: float = 2.0


@dataclass
class ERConfig(WholeModelConfig):
    """Mammoth seq-cifar10 'er' buffer 200: lr 0.1, minibatch_size 32."""

    lr: float = 0.1
    buffer_size: int = 15
    minibatch_size: int = 32


@dataclass
class DERppConfig(WholeModelConfig):
    """Mammoth seq-cifar10 'derpp' buffer 200: lr 0.03, minibatch_size 32, alpha 0.1, beta 0.5."""

    lr: float = 0.03
    buffer_size: int = 15
    minibatch_size: int = 32
    alpha: float = 0.1
    beta: float = 0.5


@dataclass
class FDRConfig(WholeModelConfig):
    """Mammoth seq-cifar10 'fdr' buffer 200: lr 0.03, minibatch_size 32; alpha 1.0 = what models/fdr.py applies."""

    lr: float = 0.03
    buffer_size: int = 15
    minibatch_size: int = 32
    alpha: float = 1.0


@dataclass
class LatentReplayConfig(WholeModelConfig):
    """ER's values (Mammoth seq-cifar10 'er'), replayed in the latent space."""

    lr: float = 0.1
    buffer_size: int = 15
    minibatch_size: int = 32


@dataclass
class PNNConfig(WholeModelConfig):
    """Mammoth seq-cifar10 'pnn': lr 0.03, plain SGD (a new optimiser per column)."""

    lr: float = 0.03


@dataclass
class SparCLConfig(WholeModelConfig):
    """SparCL's script (neu-spiral/SparCL @ 3f983f3d): see ``bench/methods/sparcl.py`` for each value.

    ``lower_bound`` / ``upper_bound`` left ``None`` follow ``sparsity``: the script's pattern
    ``(s, s+0.01, s)`` / ``(s-0.01, s, s)``.
    """

    lr: float = 0.03
    buffer_size: int = 15
    minibatch_size: int = 32
    sparsity: float = 0.9
    lower_bound: Optional[list] = None
    upper_bound: Optional[list] = None
    bound_points: list = field(default_factory=lambda: [0.1, 0.9])
    mask_update_every: float = 0.1
    sp_lmd: float = 0.5
    gradient_sparse: float = 0.95
    sample_frequency: int = 30
    remove_fraction: float = 0.3
    remove_until: float = 0.4
    use_cl_mask: bool = True

    def __post_init__(self) -> None:
        s = float(self.sparsity)
        if self.lower_bound is None:
            self.lower_bound = [s, s + 0.01, s]
        if self.upper_bound is None:
            self.upper_bound = [s - 0.01, s, s]


@dataclass
class SparCLERConfig(SparCLConfig):
    """ER's replay weight: the script's ``--buffer_weight`` default 1.0."""

    buffer_weight: float = 1.0


@dataclass
class SparCLDERppConfig(SparCLConfig):
    """DER++'s replay weights: the script's ``--buffer_weight 0.1 --buffer_weight_beta 0.5``."""

    alpha: float = 0.1
    beta: float = 0.5


@dataclass
class LightCLReferenceConfig:
    """The authors' procedure: the same defaults as the engine's learner (their code)."""

    lr: float = _LC.lr
    beta: float = _LC.beta
    buffer_size: int = _LC.buffer_size
    ratio: float = _LC.ratio


def _default_recover_epochs() -> int:
    from lightcl.export.prune import DEFAULT_RECOVER_EPOCHS

    return int(DEFAULT_RECOVER_EPOCHS)


@dataclass
class LightCLSparseConfig(LightCLConfig):
    """The learner's options + the pruning's: ``sparsity`` ("authors" or a number), the recovery epochs and
    ``round_channels`` (None: the authors' counts; 16: multiples of 16, docs/results/sparse-latency.md)."""

    sparsity: Any = "authors"
    recover_epochs: int = field(default_factory=_default_recover_epochs)
    round_channels: Optional[int] = None


@dataclass
class LightCLReplayConfig(LightCLConfig):
    """The learner's options (the authors' defaults) + an int8 feature-replay memory of 2 MiB, 32 replayed
    samples per step (ER's ``minibatch_size``), weight 1: fixed a priori, not tuned (docs/benchmarks.md)."""

    replay_budget: Any = "2MiB"
    replay_codec: str = "int8"


@dataclass
class LightCLReplayFreeConfig(LightCLReplayConfig):
    """Task-free: CE over every seen class (no task to slice by); masks and buffer refreshed every 50 steps
    (about a quarter of an offline task's epoch) or when a new class arrives."""

    loss_slice: str = "all"
    refresh_every: int = 50


@dataclass
class RemindConfig:
    """REMIND's values (github tyler-hayes/REMIND, run_imagenet_experiment.sh and REMINDModel.py): 50 replayed
    samples per new sample, lr 0.1 decayed per class to 0.001 in steps of 100 samples, SGD momentum 0.9, weight
    decay 1e-5, feature-space random resized crops (scale 2/7..1), mixup alpha 0.1, 256 centroids per codebook
    and 16 channels per codebook (their 512 channels / 32 codebooks; a feature whose channel count 16 does not
    divide takes its largest divisor below 16); base initialisation (task 1) at their base-init lr 0.1. The buffer is held to a byte budget, 2 MiB as ``lightcl-replay``."""

    start_lr: float = 0.1
    end_lr: float = 0.001
    lr_step_size: int = 100
    base_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-5
    replay_samples: int = 50
    mixup: bool = True
    mixup_alpha: float = 0.1
    random_resized_crops: bool = True
    crop_scale_min: float = 2.0 / 7.0
    codebook_size: int = 256
    channels_per_codebook: int = 16
    replay_budget: Any = "2MiB"


def field_names(cls: type) -> list[str]:
    """The hyperparameters a config class knows."""
    return [f.name for f in dataclasses.fields(cls)]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _coerce(method: str, name: str, typ: str, v: Any) -> Any:
    """``v`` as the field's declared type (ints accepted for floats, 15.0 for ints), or one InputError line."""
    options = [o.strip() for o in typ.replace("Optional[", "").replace("]", "|None").split("|") if o.strip()]
    if v is None and "None" in options:
        return None
    for o in options:
        if o == "Any":
            return v
        if o == "float" and _is_number(v):
            return float(v)
        if o == "int" and _is_number(v) and float(v).is_integer():
            return int(v)
        if o == "bool" and isinstance(v, bool):
            return v
        if o == "str" and isinstance(v, str):
            return v
        if o.startswith("list") and isinstance(v, (list, tuple)) and all(_is_number(x) for x in v):
            return [float(x) for x in v]
    raise InputError(f"{method}: hyperparameter {name} must be {typ}, got {v!r}")


def unknown_keys(cls: type, hp: dict) -> list[str]:
    known = set(field_names(cls))
    return sorted(k for k in hp if k not in known)


def make_config(method: str, hp: dict | None = None, where: str | None = None, *, cls: type) -> Any:
    """``cls`` (method ``method``'s config class) with ``hp`` applied: unknown keys or a wrong type are one
    :class:`InputError` line."""
    hp = dict(hp or {})
    bad = unknown_keys(cls, hp)
    if bad:
        at = f" in {where}" if where else ""
        raise InputError(f"{method}: unknown hyperparameter(s) {bad}{at}; known: {sorted(field_names(cls))}")
    types = {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
             for f in dataclasses.fields(cls)}
    return cls(**{k: _coerce(method, k, types[k], v) for k, v in hp.items()})


def defaults(cls: type) -> dict:
    """Every field's default (derived defaults resolved), as a plain dict."""
    return dataclasses.asdict(cls())
