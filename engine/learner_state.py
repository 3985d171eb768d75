"""A learner's state dict: built from the learner, checked field by field, installed into a learner.

Why here: ``LightCL.state_dict()`` / ``load_state_dict()`` are the learner's public face, but what a state
*is* (its keys, their types, which options must match, how an expandable classifier grows to the state's
size) is one idea of its own. The checks run before anything changes, so a bad state leaves the learner as
it was; the cross-field invariants live in engine/state_check.py, the on-disk format in engine/state.py.

Functions take the learner as their first argument (``lrn``). Every failure is one :class:`IntegrityError`
(or :class:`InputError` for a learner made differently) naming ``where``. Python 3.8-compatible (device side).
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any, Mapping

import torch
from torch import Tensor

from .classmap import ClassMap
from .config import LightCLConfig
from .errors import InputError, IntegrityError, LightCLError
from .head import Head
from .memory import FeaturePatternMemory
from .state_check import check_whole

STATE_KEYS = ("config", "tasks", "class_index", "current_task", "finished_tasks", "pending_capture", "counters",
              "metrics", "extra", "head", "memory", "optimizer", "rng", "frozen_statistics", "last_features")
# options that act only when a learner is made (its device stays; the state's seed and classifier reset are adopted)
INIT_ONLY_OPTIONS = ("device", "seed", "reset_classifier", "extract_budget")
OPTIONAL_STATE_KEYS = frozenset({"frozen_id", "frozen_bn", "loss_components", "optimizer_class", "class_map",
                                 "replay"})
INT64 = (-(1 << 63), (1 << 63) - 1)
# per-element optimizer states of torch's built-in optimizers: each must have its parameter's shape
ELEMENTWISE_OPTIMIZER_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "square_avg",
                               "acc_delta", "sum", "prev", "step_size", "ax", "eta_l", "mu_product")


def build_state(lrn: Any) -> dict[str, Any]:
    """``LightCL.state_dict()`` (the caller holds the learner's lock): JSON values and tensor references."""
    return {
        "config": asdict(lrn.config),
        "tasks": [[t, list(cs)] for t, cs in lrn.tasks.items()],
        "class_index": [[c, i] for c, i in lrn.class_index.items()],
        "class_map": lrn.classes.state_entry(),
        "current_task": lrn.current_task,
        "finished_tasks": list(lrn.finished_tasks),
        "pending_capture": lrn._pending_capture,
        "counters": dict(lrn.counters),
        "metrics": lrn.metrics,
        "extra": lrn.extra,
        "frozen_id": lrn.frozen_id,
        "frozen_bn": lrn.frozen_bn,
        "loss_components": [[c.name, c.weight] for c in lrn.loss_components],
        "optimizer_class": type(lrn.optimizer).__name__,
        "head": {k: v.detach() for k, v in lrn.head.state_dict().items()},
        "memory": lrn.memory.state_dict(),
        "optimizer": lrn.optimizer.state_dict(),
        "rng": lrn.generator.get_state(),
        "frozen_statistics": {k: v.detach() for k, v in lrn.frozen_statistics().items()},
        "last_features": None if lrn._last_features is None else lrn._last_features.detach(),
        **({} if lrn.replay is None else {"replay": lrn.replay.memory.state_dict()}),
    }


def load_into(lrn: Any, state: Mapping[str, Any], where: str) -> None:
    """``LightCL.load_state_dict()``: every entry checked, then installed at once under the learner's lock."""
    if not isinstance(state, Mapping):
        raise IntegrityError(f"{where}: a learner state dict is a mapping, got {type(state).__name__}")
    missing = sorted(set(STATE_KEYS) - set(state))
    unknown = sorted(set(state) - set(STATE_KEYS) - OPTIONAL_STATE_KEYS)
    if missing or unknown:
        raise IntegrityError(f"{where}: learner state entries {'missing ' + str(missing) if missing else ''}"
                             f"{' ' if missing and unknown else ''}{'unknown ' + str(unknown) if unknown else ''}")
    check_identity(lrn, state, where)
    head_sd = state["head"]
    fc_key = getattr(lrn.head, "classifier_key", "fc") + ".weight"  # "net.<classifier>" for a graph head
    if not isinstance(head_sd, Mapping) or not all(isinstance(v, Tensor) for v in head_sd.values()) \
            or not isinstance(head_sd.get(fc_key), Tensor) or head_sd[fc_key].dim() != 2:
        raise IntegrityError(f"{where}: head must be the head's module state dict")
    rows = int(head_sd[fc_key].shape[0])
    tasks, class_index = check_tasks(state, rows, where)
    classes = ClassMap.from_state(state.get("class_map"), tasks, class_index, where)
    with lrn._lock:
        head = _sized_head(lrn, head_sd, rows, where)
        checked = check_plain(lrn, state, head, rows, class_index, where)
        whole = check_whole(state, tasks, where)  # cross-field invariants and the RNG, before any change
        replay = lrn.replay
        fresh = _replay_memory(replay, state, class_index, where)
        optimizer = _loaded_optimizer(lrn, head, state["optimizer"], checked["frozen"], where)
        with torch.no_grad():
            head.load_state_dict({k: v.to(lrn.device) for k, v in head_sd.items()})
        if hasattr(lrn.optimizer, "remove"):
            lrn.optimizer.remove()
        lrn.head, lrn.optimizer, lrn.memory = head, optimizer, checked["memory"]
        if replay is not None:
            replay.memory = fresh
        lrn.config.seed = state["config"].get("seed", lrn.config.seed)
        lrn.config.reset_classifier = state["config"].get("reset_classifier", lrn.config.reset_classifier)
        lrn.generator.set_state(state["rng"])
        lrn.classes = classes
        lrn.current_task = None if state["current_task"] is None else int(state["current_task"])
        lrn.finished_tasks = [int(t) for t in state["finished_tasks"]]
        lrn._pending_capture = state["pending_capture"]
        lrn.counters.update(whole["counters"])
        lrn.metrics, lrn.extra = whole["metrics"], whole["extra"]
        last = state["last_features"]
        lrn._last_features = None if last is None else last.to(lrn.device)


def _sized_head(lrn: Any, head_sd: Mapping[str, Tensor], rows: int, where: str) -> Head:
    """The learner's head, or a grown copy of it when an expandable classifier's state has more rows; the
    state's weights checked against it (names, shapes, finite)."""
    head = lrn.head
    if rows != head.num_classes:
        if lrn.config.num_classes is not None or rows < head.num_classes:
            raise IntegrityError(f"{where}: the state's classifier has {rows} outputs, this learner's "
                                 f"{head.num_classes}")
        head = copy.deepcopy(head)
        head.expand_classes(rows, generator=torch.Generator())  # its new rows are overwritten below
    want = {k: v.shape for k, v in head.state_dict().items()}
    if set(want) != set(head_sd) or any(head_sd[k].shape != want[k] or not bool(torch.isfinite(head_sd[k].float()).all())
                                        for k in want):
        raise IntegrityError(f"{where}: head weights do not fit this head (names, shapes or non-finite values)")
    return head


def _replay_memory(replay: Any, state: Mapping[str, Any], class_index: dict[int, int], where: str):
    """The replay memory to install: the state's, checked; an empty one for a state made before replay existed;
    None when the learner has no replay (a state holding one is refused)."""
    if "replay" in state and replay is None:
        raise IntegrityError(f"{where} holds a replay memory but this learner has no replay_budget")
    if replay is None:
        return None
    fresh = replay.memory.empty_like()
    if "replay" in state:
        if not isinstance(state["replay"], Mapping):
            raise IntegrityError(f"{where}: replay must be the replay memory's state dict")
        fresh.load_state_dict(state["replay"], known_columns=class_index.values(), where=f"{where}: replay")
    return fresh


def _loaded_optimizer(lrn: Any, head: Head, sd: Any, frozen: Mapping[str, Tensor], where: str):
    """A new optimizer over ``head`` holding the state's optimizer state; the frozen part's statistics are
    loaded here too (the last step that can fail), and the new optimizer's hooks removed if either fails."""
    optimizer = lrn._make_optimizer(head=head)
    try:
        load_optimizer(optimizer, sd, where)
        if frozen:
            try:
                lrn.extractor.load_statistics(dict(frozen))
            except LightCLError:
                raise
            except Exception as e:
                raise IntegrityError(f"{where}: frozen_statistics do not fit this extractor "
                                     f"({str(e).splitlines()[0][:200]})") from None
    except BaseException:
        if hasattr(optimizer, "remove"):
            optimizer.remove()
        raise
    return optimizer


def check_identity(lrn: Any, state: Mapping[str, Any], where: str) -> None:
    """Refuse a state of another frozen part, extractor mode, option set, loss or optimizer."""
    want, have = state.get("frozen_id"), lrn.frozen_id
    if want and have and want != have:
        raise IntegrityError(f"{where} was trained against frozen part {str(want)[:12]}..., but this extractor "
                             f"runs {have[:12]}...: load it with the export it was learned on")
    check_frozen_bn(state.get("frozen_bn"), lrn.extractor, where)
    config = state["config"]
    if not isinstance(config, Mapping):
        raise IntegrityError(f"{where}: config must be a JSON object")
    if isinstance(config.get("seed", 0), bool) or not isinstance(config.get("seed", 0), int) \
            or not isinstance(config.get("reset_classifier", True), bool):
        raise IntegrityError(f"{where}: config seed must be an integer and reset_classifier true or false")
    mine = asdict(lrn.config)
    defaults = asdict(LightCLConfig())  # an option a state predates has its default
    differ = sorted(k for k in set(mine) | set(config)
                    if k not in INIT_ONLY_OPTIONS and config.get(k, defaults.get(k)) != mine.get(k))
    if differ:
        raise IntegrityError(f"{where} was made with other options ({', '.join(differ)}): use LightCL.load, or a "
                             "learner made with the state's config")
    recorded = state.get("loss_components")
    current = [[c.name, c.weight] for c in lrn.loss_components]
    if recorded is not None and [[n, float(w)] for n, w in recorded] != current:
        raise InputError(f"{where} was learned with loss components {recorded}; this learner has {current}: "
                         "pass the same loss_components")
    recorded = state.get("optimizer_class")
    have_cls = type(lrn.optimizer).__name__
    if recorded is not None and recorded != have_cls and {recorded, have_cls} != {"SGD", "PerParameterSGD"}:
        raise InputError(f"{where} was learned with the optimizer {recorded}; this learner has {have_cls}: pass "
                         "the same optimizer factory")


def check_frozen_bn(recorded: str | None, extractor: Any, where: Any = "the state") -> None:
    """A state learned with train-mode frozen BN holds the frozen part's drifted statistics and must be
    reopened with an extractor that uses them (torch, ``frozen_bn="train"``), and vice versa."""
    have = "train" if getattr(extractor, "batch_statistics", False) else "eval"
    if recorded is None or recorded == have:  # None: a state saved before the mode was recorded
        return
    if recorded == "train":
        raise InputError(f"{where} was learned with frozen_bn='train' (the frozen part's BN statistics drifted "
                         "and are saved with it): open it with load_extractor(export, backend='torch', "
                         "frozen_bn='train')")
    raise InputError(f"{where} was learned with frozen_bn={recorded!r}, this extractor runs frozen_bn={have!r}: "
                     "open it with the extractor mode it was learned with")


def check_plain(lrn: Any, state: Mapping[str, Any], head: Head, rows: int, class_index: dict[int, int],
                where: str) -> dict[str, Any]:
    """Check the RNG, frozen statistics, last features, counters, metrics, extra; build the memory."""
    rng = state["rng"]
    ref = torch.Generator().get_state()
    if not isinstance(rng, Tensor) or rng.dtype != ref.dtype or rng.shape != ref.shape:
        raise IntegrityError(f"{where}: rng is not a generator state")
    frozen = state["frozen_statistics"]
    if not isinstance(frozen, Mapping) or any(
            not isinstance(v, Tensor) or v.dtype not in (torch.float32, torch.int64)
            or not bool(torch.isfinite(v.float()).all()) for v in frozen.values()):
        raise IntegrityError(f"{where}: frozen_statistics must be finite float32/int64 BN statistics")
    last = state["last_features"]
    if last is not None and (not isinstance(last, Tensor) or last.dtype != torch.float32 or last.dim() != 4
                             or tuple(last.shape[1:]) != tuple(head.in_features)):
        raise IntegrityError(f"{where}: last_features must be float32 [N, {list(head.in_features)}]")
    counters = state["counters"]
    if not isinstance(counters, Mapping) or any(
            isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < (1 << 63) for v in counters.values()):
        raise IntegrityError(f"{where}: counters must map names to non-negative integers")
    for key in ("metrics", "extra"):
        if not isinstance(state[key], dict):
            raise IntegrityError(f"{where}: {key} must be a JSON object")
    if not isinstance(state["pending_capture"], bool):
        raise IntegrityError(f"{where}: pending_capture must be true or false")
    if not isinstance(state["memory"], Mapping):
        raise IntegrityError(f"{where}: memory must be the memory's state dict")
    was = head.training
    head.eval()
    try:
        with torch.no_grad():
            _, taps = head(torch.zeros(1, *head.in_features, device=lrn.device), return_taps=True)
    finally:
        head.train(was)
    memory = FeaturePatternMemory(lrn.config.buffer_size, lrn.config.ratio)
    memory.load_state_dict(state["memory"], in_features=head.in_features, num_classes=rows,
                           tap_shapes={k: tuple(v.shape[1:]) for k, v in taps.items()},
                           known_labels=class_index, image_shape=lrn.input_shape, device=lrn.device,
                           where=f"{where}: memory")
    return {"memory": memory, "frozen": frozen}


def load_optimizer(optimizer: torch.optim.Optimizer, sd: Any, where: str) -> None:
    """The optimizer's own ``load_state_dict`` after checking what torch does not: per-element states have
    their parameter's shape, floating states are finite."""
    if not isinstance(sd, Mapping) or not isinstance(sd.get("state"), Mapping) \
            or not isinstance(sd.get("param_groups"), list):
        raise IntegrityError(f"{where}: optimizer must be an optimizer state dict (state, param_groups)")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sd = {"state": {_int(int(k) if isinstance(k, str) and k.isdigit() and len(k) < 20 else k,
                         f"{where}: optimizer state key"): v for k, v in sd["state"].items()},
          "param_groups": sd["param_groups"]}
    for k, st in sd["state"].items():
        if not 0 <= k < len(params) or not isinstance(st, Mapping):
            raise IntegrityError(f"{where}: optimizer state for parameter {k} of {len(params)}")
        for name, v in st.items():
            if not isinstance(v, Tensor):
                continue
            if (v.is_floating_point() and not bool(torch.isfinite(v).all())) or \
                    (name in ELEMENTWISE_OPTIMIZER_STATE and v.shape != params[k].shape):
                raise IntegrityError(f"{where}: optimizer state {k}.{name} ({v.dtype} {list(v.shape)}) does not "
                                     f"fit its parameter {list(params[k].shape)}")
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise IntegrityError(f"{where}: optimizer state does not fit ({str(e).splitlines()[0][:200]})") from None


def _int(v, where: str, lo: int = INT64[0], hi: int = INT64[1]) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise IntegrityError(f"{where} must be an integer in [{lo}, {hi}], got {str(v)[:40]!r}")
    return v


def _list(v, where: str) -> list:
    if not isinstance(v, list):
        raise IntegrityError(f"{where} must be a list, got {type(v).__name__}")
    return v


def check_tasks(state: Mapping[str, Any], num_classes: int, where: str) -> tuple[dict[int, list[int]], dict[int, int]]:
    """The task/class bookkeeping of a state dict, checked: ``(tasks, class_index)``."""
    tasks: dict[int, list[int]] = {}
    for item in _list(state["tasks"], f"{where}: tasks"):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise IntegrityError(f"{where}: each task must be [task_id, [class, ...]]")
        t = _int(item[0], f"{where}: task id")
        if t in tasks:
            raise IntegrityError(f"{where}: task {t} listed twice")
        tasks[t] = [_int(c, f"{where}: class id of task {t}") for c in _list(item[1], f"{where}: classes of task {t}")]
    seen_classes = [c for cs in tasks.values() for c in cs]
    index: dict[int, int] = {}
    entries = _list(state["class_index"], f"{where}: class_index")
    for item in entries:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise IntegrityError(f"{where}: each class_index entry must be [class, index]")
        c = _int(item[0], f"{where}: class id")
        index[c] = _int(item[1], f"{where}: index of class {c}", 0, max(0, num_classes - 1))
    if len(set(index.values())) != len(index) or len(index) != len(entries):
        raise IntegrityError(f"{where}: class_index maps two classes to one output (or lists a class twice)")
    if not set(seen_classes) <= set(index) or any(len(set(cs)) != len(cs) for cs in tasks.values()):
        raise IntegrityError(f"{where}: the tasks' classes and class_index disagree")
    # (a class may belong to several tasks: it came back in a later lesson; ClassMap.from_state checks the rest)
    cur = state["current_task"]
    if cur is not None and _int(cur, f"{where}: current_task") not in tasks:
        raise IntegrityError(f"{where}: current_task {cur!r} is not a known task")
    fin = [_int(t, f"{where}: finished task") for t in _list(state["finished_tasks"], f"{where}: finished_tasks")]
    if len(set(fin)) != len(fin) or not set(fin) <= set(tasks):
        raise IntegrityError(f"{where}: finished_tasks must be distinct known tasks")
    return tasks, index
