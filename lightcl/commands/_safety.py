"""Checks every verb makes before any work: where ``--json`` may write, and resource-sized arguments
(threads, batch sizes) bounded by what this machine has (``lightcl.engine.validate``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from lightcl.engine import validate
from lightcl.engine.errors import InputError
from lightcl.engine.outpath import check_output_dir as _check_output_dir
from lightcl.engine.outpath import check_output_file
from lightcl.engine.validate import check_batch  # noqa: F401  (re-exported: the verbs import their checks from here)


def _owned(d: Path) -> set[str]:
    """Names lightcl writes in ``d`` if it is (or will be) a state or an export directory."""
    from lightcl.engine import export_dir, state

    names = set(state.owned_names(d))
    if (d / export_dir.META_NAME).exists():
        names |= export_dir.owned_names(d)
    else:
        names |= {export_dir.META_NAME, *export_dir.REQUIRED_FILES, *export_dir.FROZEN_FILES}
    return names


def check_output(path: str | os.PathLike | None, flag: str = "--json", dirs: Iterable = (), files: Iterable = ()) -> None:
    """Refuse an output file that would overwrite lightcl's own: a file of a state or export directory the
    command uses (``lightcl learn --json STATE/state.json`` overwrote the state and exited 0), one of ``files``
    (a checkpoint), a directory, or one of those directories itself. A file of another name inside such a
    directory is fine: saves keep it."""
    if path is None:
        return
    p = check_output_file(path, flag)  # the one output rule: no link, FIFO, device, directory; parent reachable
    try:
        target = p.parent.resolve() / p.name
    except (OSError, RuntimeError) as e:
        raise InputError(f"{flag} {p}: cannot resolve its folder ({e})") from None
    for f in files:
        if f is not None and _resolved(f) == target:
            raise InputError(f"{flag} {p} would overwrite {f}; choose another file")
    for d in dirs:
        if d is None:
            continue
        d = _resolved(d)
        if d is None:
            continue
        if target == d:
            raise InputError(f"{flag} {p} is the directory lightcl writes its state/export to; give a file name")
        if target.parent == d and p.name in _owned(d):
            raise InputError(f"{flag} {p} would overwrite {p.name}, a file of the lightcl directory {d}; "
                             "choose another file")


def _resolved(f) -> Path | None:
    """``f`` resolved, or None where it cannot be (a symlink loop: the verb's own load says why)."""
    try:
        return Path(f).absolute().resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def check_output_dir(path, flag: str = "--out") -> None:
    """An output directory (``--out DIR``) under the one output rule (``engine.outpath``)."""
    if path is not None:
        _check_output_dir(path, flag)


def check_threads(v, flag: str = "--threads") -> None:
    """The engine's bound, with the CLI flag's name in the message."""
    validate.check_threads(v, flag)


def _activation_bytes(module, x) -> int:
    from lightcl.engine.footprint import count_activations

    return 4 * count_activations(module, x)


def export_bytes_per_sample(export_dir, train: bool = True) -> int | None:
    """Memory one sample costs in a step on this export: leaf-module outputs of the frozen part and the head
    (x3 when training: outputs, their gradients, workspace). None when the export cannot be read (the verb's
    own load then says why)."""
    import torch

    from lightcl.engine.errors import LightCLError
    from lightcl.engine.export_dir import export_file, load_export_meta, load_head
    from lightcl.engine.frozen import load_frozen

    try:
        meta = load_export_meta(export_dir, verify=False)
        net, _ = load_frozen(export_file(export_dir, meta, "frozen.safetensors"))
        head = load_head(export_dir, meta=meta)
        x = torch.zeros(1, *meta["input_shape"])
        with torch.no_grad():
            f = net(x)
        acts = _activation_bytes(net, x) + _activation_bytes(head, f) + 4 * x.numel()
    except (LightCLError, OSError, RuntimeError, ValueError, KeyError, TypeError):
        return None
    return acts * (3 if train else 1)


def backbone_bytes_per_sample(arch: str, width: int, input_size=None) -> int | None:
    """Training memory per sample of a whole backbone (pretrain, analyze); ``input_size`` None: the arch's
    registered one (host-only: the zoo is imported here, lazily, as building the backbone needs it)."""
    import torch

    from lightcl.export.zoo import backbone_entry, create_backbone

    try:
        if input_size is None:
            input_size = backbone_entry(arch).input_size
        if not 0 < int(width) <= 1024 or not all(0 < int(v) <= 4096 for v in input_size):
            return None  # absurd: the verb's own checks refuse it
        model = create_backbone(arch, width=int(width), in_channels=int(input_size[0]))
        return 3 * (_activation_bytes(model, torch.zeros(1, *input_size)) + 4 * int(torch.tensor(input_size).prod()))
    except (ValueError, RuntimeError, TypeError, KeyError):
        return None
