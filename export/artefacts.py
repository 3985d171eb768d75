"""What an export directory can hold, as a small registry: one entry per artefact kind.

Each kind registers (:func:`register_artefact`) its name, the files it writes, the kinds it needs built first,
a ``requires()`` check of its optional runtime (run before any work: a missing one is exit 3, one line), whether
it may be added to an existing export, and one build function ``build(b: Build, options)`` taking the shared
:class:`Build` context and the kind's own small options object. The kinds, in build order:

* ``onnx``: frozen.onnx, frozen.safetensors, head.safetensors, checked for parity; :class:`OnnxOptions`;
* ``int8``: frozen.int8.onnx (static QDQ), checked for agreement with fp32; :class:`Int8Options`;
* ``trt82``: no file, ``meta["trt82_check"]`` (the ``jetson-nano`` profile's TensorRT 8.2 operator check);
* ``tensorrt``: ``frozen.<precision>.trt<version>.sm<cc>.<sha16>.plan``; :class:`PlanOptions`; may be added later.

``onnx`` lives in :mod:`.onnx_export`, ``int8`` in :mod:`.quantize`, ``trt82`` in :mod:`.trt_ops`, ``tensorrt`` in
:mod:`.tensorrt_build`; each registers itself when imported, and :func:`kinds` imports all four. A kind is
"later" when it can be added to a finished export (``lightcl export --add-plan``) without changing ``frozen_id``
(a learned state stays bound to the export): a TensorRT plan is built per device from ``frozen.onnx`` and is
not part of the id; an int8 model is (engine.export_dir), so it is made with the export or not at all.

:class:`ExportOptions` groups the per-kind options of one export (plus the checkpoint intake's pruning);
:meth:`ExportOptions.from_kwargs` maps the flat keyword names ``export_checkpoint`` has always taken.
"""
from __future__ import annotations

import copy
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lightcl.engine.errors import InputError, StateError
from lightcl.engine.export_dir import FROZEN_FILES, META_NAME, frozen_id_of, load_export_meta, owned_names
from lightcl.engine.fileio import atomic_directory, sha256_file, verify_files, write_json_atomic

from .registry import lookup

if TYPE_CHECKING:  # torch is imported by the kinds' modules, not by the registry
    import torch

PROFILE_NAMES = ("default", "jetson-nano")  # onnx_export.PROFILES says what each means


# --------------------------------------------------------------------------------------------- options
@dataclass
class OnnxOptions:
    """``onnx``: exporter profile and the parity tolerance (``relative_atol``: ``atol * max(1, max |feature|)``,
    for any model's features whatever their scale; the zoo's checkpoints keep the absolute ``atol``)."""

    profile: str = "default"
    atol: float = 1e-4
    relative_atol: bool = False

    def check(self) -> None:
        if self.profile not in PROFILE_NAMES:
            raise InputError(f"unknown profile {self.profile!r}; choose from {', '.join(PROFILE_NAMES)}")
        if not self.atol > 0:  # NaN too
            raise InputError(f"--atol must be > 0, got {self.atol}")


@dataclass
class Int8Options:
    """``int8``: ``calib_size`` real images ("auto": ``quantize.resolve_calib_size``), refused below
    ``min_agreement`` top-1 agreement with fp32 unless ``force``; ``settings`` go to ``quantize_frozen``
    (``method``, ``per_channel``, ``activation``, ``reduce_range``, ...)."""

    calib_size: int | str = "auto"
    min_agreement: float = 0.98
    force: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InputError(f"--min-agreement must be in [0, 1], got {self.min_agreement}")


@dataclass
class PlanOptions:
    """``tensorrt``: plan precision (fp32|fp16|int8), optimisation profile 1..``max_batch``, builder workspace,
    the timing/calibration cache folder (None: ``$LIGHTCL_CACHE/tensorrt``), int8 calibration images."""

    precision: str = "fp32"
    max_batch: int = 32
    workspace_mib: int = 1024
    cache_dir: str | Path | None = None
    calib_size: int | str = "auto"


@dataclass
class PruneOptions:
    """The checkpoint intake's structured pruning before the split (:mod:`.prune`, docs/sparse.md)."""

    sparsity: str | float
    recover_epochs: int | None = None
    round_channels: int | None = None


@dataclass
class ExportOptions:
    """One export's artefacts and their options: ``onnx`` always; ``int8`` / ``tensorrt`` when set. ``prune``
    and ``data_path`` (where the checkpoint's dataset is) apply to lightcl checkpoints only."""

    onnx: OnnxOptions = field(default_factory=OnnxOptions)
    int8: Int8Options | None = None
    tensorrt: PlanOptions | None = None
    prune: PruneOptions | None = None
    data_path: str | None = None
    progress: bool = True

    @classmethod
    def from_kwargs(cls, profile: str = "default", atol: float = 1e-4, int8: bool = False,
                    calib_size: int | str = "auto", min_agreement: float = 0.98, force: bool = False,
                    data_path: str | None = None, progress: bool = True, tensorrt: bool = False,
                    trt_precision: str | None = None, max_batch: int = 32, workspace_mib: int = 1024,
                    trt_cache_dir: str | Path | None = None, int8_options: dict[str, Any] | None = None,
                    sparsity: str | float | None = None, recover_epochs: int | None = None,
                    round_channels: int | None = None) -> "ExportOptions":
        """The flat keywords ``export_checkpoint`` has always taken (a plain mapping, no logic of its own):
        ``trt_precision`` defaults to int8 with ``int8``, else fp32; ``calib_size`` serves both int8 kinds."""
        i8 = Int8Options(calib_size, min_agreement, force, dict(int8_options or {}))  # checks min_agreement
        if sparsity is None and recover_epochs is not None:
            raise InputError("--recover-epochs needs --sparsity")
        if sparsity is None and round_channels is not None:
            raise InputError("--round-channels needs --sparsity")
        plan = PlanOptions(trt_precision or ("int8" if int8 else "fp32"), max_batch, workspace_mib, trt_cache_dir,
                           calib_size) if tensorrt else None
        return cls(OnnxOptions(profile, atol), i8 if int8 else None, plan,
                   None if sparsity is None else PruneOptions(sparsity, recover_epochs, round_channels),
                   data_path, progress)

    def kinds(self) -> dict[str, Any]:
        """Kind name -> its options, for :func:`build_all` (``trt82`` with the jetson-nano profile)."""
        plan: dict[str, Any] = {"onnx": self.onnx}
        if self.int8 is not None:
            plan["int8"] = self.int8
        if self.onnx.profile == "jetson-nano":  # TensorRT 8.2's published operator list (export/trt_ops.py)
            plan["trt82"] = None
        if self.tensorrt is not None:
            plan["tensorrt"] = self.tensorrt
        return plan


def options_from(options: ExportOptions | None, kw: dict[str, Any], where: str) -> ExportOptions:
    """A copy of ``options`` (the export resolves and completes it; the caller's object is left as it was), or the
    flat keywords; not both (a TypeError, as for an unknown keyword)."""
    if options is not None and kw:
        raise TypeError(f"{where}: pass options=ExportOptions(...) or keywords ({', '.join(kw)}), not both")
    return copy.deepcopy(options) if options is not None else ExportOptions.from_kwargs(**kw)


# ------------------------------------------------------------------------------------- build context
@dataclass
class Images:
    """Real images the kinds check and calibrate on (normalised, at the model's input size). ``calib(n)`` gives
    ``n`` calibration images; ``x_par``/``x_test`` the parity and held-out batches (``y_*`` None without labels
    of the model's classes). Adding to an existing export has calibration images at most."""

    calib: Callable[[int], "torch.Tensor"] | None = None
    calib_desc: str = ""
    x_par: "torch.Tensor | None" = None
    y_par: "torch.Tensor | None" = None
    x_test: "torch.Tensor | None" = None
    y_test: "torch.Tensor | None" = None
    parity_desc: str = ""
    heldout_desc: str = ""


@dataclass
class Build:
    """What every kind's build function gets: the directory being written (a temporary sibling, swapped in when
    every kind succeeded), its ``meta`` (each kind records its figures), the images, the two halves of the model
    (None when adding to a finished export: only ``frozen.onnx`` is there to build from), and where to report."""

    dir: Path
    meta: dict[str, Any]
    images: Images
    say: Callable[[str], None]
    progress: bool = True
    frozen: "torch.nn.Module | None" = None  # what ONNX exports
    head: "torch.nn.Module | None" = None
    device_frozen: "torch.nn.Module | None" = None  # what frozen.safetensors stores (default ``frozen``)
    input_shape: tuple[int, ...] | None = None
    frozen_extra: dict[str, Any] = field(default_factory=dict)  # frozen.safetensors metadata


# ------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ArtefactKind:
    name: str
    build: Callable[[Build, Any], None]
    order: int  # build order: a kind reads what the lower ones wrote
    files: str = ""  # what it writes, for docs and messages
    needs: tuple[str, ...] = ()
    requires: Callable[[], Any] | None = None
    later: bool = False  # may be added to a finished export (frozen_id unchanged)


_KINDS: dict[str, ArtefactKind] = {}
_BUILTIN = ("onnx_export", "quantize", "trt_ops", "tensorrt_build")


def register_artefact(name: str, *, order: int, files: str = "", needs: tuple[str, ...] = (),
                      requires: Callable[[], Any] | None = None, later: bool = False):
    """Decorator registering ``build(b: Build, options) -> None`` as the artefact kind ``name``."""

    def deco(fn: Callable[[Build, Any], None]):
        _KINDS[name] = ArtefactKind(name, fn, order, files, tuple(needs), requires, later)
        return fn

    return deco


def kinds() -> dict[str, ArtefactKind]:
    """Every registered kind (the built-in ones imported first)."""
    import importlib

    for mod in _BUILTIN:
        importlib.import_module(f"{__package__}.{mod}")
    return dict(_KINDS)


def artefact(name: str) -> ArtefactKind:
    return lookup(kinds(), name, "artefact kind", InputError)


def preflight(plan: dict[str, Any]) -> list[ArtefactKind]:
    """The kinds of ``plan`` in build order, after each one's ``needs`` and ``requires()`` were checked (before
    any work: a missing runtime fails here, exit 3)."""
    chosen = sorted((artefact(n) for n in plan), key=lambda k: k.order)
    for k in chosen:
        missing = [n for n in k.needs if n not in plan]
        if missing:
            raise InputError(f"artefact {k.name!r} needs {', '.join(missing)}")
        if k.requires is not None:
            k.requires()
    return chosen


def build_all(b: Build, chosen: list[ArtefactKind], plan: dict[str, Any]) -> None:
    for k in chosen:
        k.build(b, plan[k.name])


def finish(d: Path, meta: dict[str, Any], t_start: float | None = None) -> None:
    """Record the sha256 of every file lightcl wrote in ``d`` and the ``frozen_id`` over the frozen part (and
    ``export_seconds`` since ``t_start``), write ``meta.json``, make it all readable (an export is copied to
    devices)."""
    names = sorted(p.name for p in d.iterdir() if p.is_file() and p.name != META_NAME and not p.name.startswith("."))
    meta["files"] = {name: sha256_file(d / name) for name in names}
    meta["frozen_id"] = frozen_id_of(meta["files"])  # every byte of the frozen part (engine.export_dir)
    if t_start is not None:
        meta["export_seconds"] = round(time.perf_counter() - t_start, 3)
    write_json_atomic(d / META_NAME, meta)
    readable(d)


def readable(d: Path) -> None:
    """Temp files/dirs are created 0600/0700; an export is meant to be copied to devices: honour the umask.
    Only what lightcl wrote is in ``d`` here: a user's files are carried in after (``atomic_directory``)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(d, 0o755 & ~mask)
    for p in d.iterdir():
        if p.is_file():
            os.chmod(p, 0o644 & ~mask)


# --------------------------------------------------------------------------------- adding to an export
def existing_export(path: str | Path, flag: str = "--add-plan") -> Path:
    """A finished export directory to add to: refuses a missing path, a symbolic link, anything that is not a
    directory (FIFO, device, file) and a directory without a lightcl ``meta.json``, each in one line."""
    from lightcl.engine.outpath import kind_of

    p = Path(os.fspath(path)).absolute()
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise StateError(f"{flag} {path}: export directory not found") from None
    except OSError as e:
        raise InputError(f"{flag} {path} cannot be used ({e.strerror or e})") from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{flag} {path} is a symbolic link; pass the real export directory")
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{flag} {path} is {kind_of(st.st_mode)}, not an export directory")
    if not os.path.lexists(p / META_NAME):
        raise InputError(f"{flag} {path} is not a lightcl export (no {META_NAME}); make one with `lightcl export`")
    return p


def add_artefact(export_dir: str | Path, name: str, options: Any, images: Images | None = None,
                 progress: bool = True, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build the "later" kind ``name`` into the finished export ``export_dir``; return the new meta.

    Every file of the export is checked against ``meta.json`` first, then the new version is made in a
    temporary sibling (copies of the export's files + the new artefact + the new meta.json) and swapped in
    atomically; files lightcl did not write are carried over, never deleted. ``frozen_id`` cannot change."""
    say = say or (lambda msg: None)
    d = existing_export(export_dir)
    kind = artefact(name)
    if not kind.later:
        raise InputError(f"{name} cannot be added to a finished export (it would change its frozen_id); re-export")
    meta = load_export_meta(d, verify=True)
    if kind.requires is not None:
        kind.requires()
    t0 = time.perf_counter()
    with atomic_directory(d, owned=owned_names) as tmp:
        for f in meta["files"]:
            shutil.copy2(d / f, tmp / f)
        verify_files(tmp, meta["files"], what="export copy")  # what was checked is what is copied
        kind.build(Build(tmp, meta, images or Images(), say, progress), options)
        before = meta["frozen_id"]
        frozen = {f: meta["files"][f] for f in FROZEN_FILES if f in meta["files"]}
        finish(tmp, meta)
        if meta["frozen_id"] != before or any(meta["files"].get(f) != s for f, s in frozen.items()):
            raise StateError(f"adding {name} changed the frozen part of {d}; nothing was changed")
    say(f"added {name} to {d} in {time.perf_counter() - t0:.1f} s")
    return meta
