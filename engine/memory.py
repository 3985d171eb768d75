"""Memorize Feature Patterns: the buffer (frozen features), target taps, vital channels.

The buffer holds frozen-extractor features of a few samples and the head's taps on them at the
start of a task. Images are kept only when the extractor's features depend on the batch they are
computed with (``frozen_bn="train"``, the authors' drifting BN): the buffer must then go through the
frozen part on its own at every step, as in the authors' code. Vital channels of each tap are the
``ratio`` of channels with the largest summed |activation| on the task's data, OR-ed across tasks.
The penalty pins the vital channels of the head's current taps on the buffer to their targets.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .errors import IntegrityError
from .reservoir import reservoir_slot

BUFFER_KEYS = ("buffer.features", "buffer.labels", "buffer.origin", "buffer.target_valid")


def vital_channels(activation: Tensor, ratio: float) -> Tensor:
    """Bool mask ``[C]``: channels whose summed |activation| over (sample, h, w) is in the top ``ratio``.

    Same rule as the authors' code: ``n_keep = int(C * ratio + 0.5)`` and the threshold is the
    ``(C - n_keep)``-th smallest score, kept inclusively, so ``n_keep + 1`` channels survive when scores
    are distinct (their off-by-one, reproduced on purpose; ties at the threshold are kept too).
    """
    if activation.dim() != 4:
        raise ValueError(f"vital_channels expects [N, C, H, W], got {list(activation.shape)}")
    c = activation.shape[1]
    score = activation.detach().abs().sum(dim=(0, 2, 3))
    n_keep = int(c * ratio + 0.5)
    k = max(1, c - n_keep)
    threshold = torch.kthvalue(score.flatten().float().cpu(), k).values.to(score.device)
    return score >= threshold


class FeaturePatternMemory:
    """Buffer features + labels + task of origin, target taps per name, OR-ed masks per conv tap."""

    def __init__(self, buffer_size: int = 15, ratio: float = 0.15) -> None:
        self.buffer_size = int(buffer_size)
        self.ratio = float(ratio)
        self.features: Tensor | None = None  # [B, C, H, W] frozen features
        self.images: Tensor | None = None  # [B, 3, H, W] only for batch-dependent extractors (frozen_bn="train")
        self.labels: Tensor | None = None  # [B]
        self.origin: Tensor | None = None  # [B] task id the sample came from
        self.targets: dict[str, Tensor] = {}  # tap -> [B, ...] head taps when recorded
        self.target_valid: Tensor | None = None  # [B] bool: has a target (reservoir samples of the current task do not)
        self.masks: dict[str, Tensor] = {}  # conv tap -> [C] bool
        self.seen = 0  # samples offered to the reservoir

    def __len__(self) -> int:
        return 0 if self.features is None else int(self.features.shape[0])

    # ---- buffer policies
    def set_buffer(self, features: Tensor, labels: Tensor, task_id: int, images: Tensor | None = None) -> None:
        """``new-task-first-batch``: replace the buffer with these samples (``images`` kept only if given)."""
        n = min(self.buffer_size, features.shape[0])
        self.features = features[:n].detach().clone()
        self.images = None if images is None else images[:n].detach().clone()
        self.labels = labels[:n].detach().clone()
        self.origin = torch.full((n,), int(task_id), dtype=torch.long)
        self.targets = {}
        self.target_valid = torch.zeros(n, dtype=torch.bool)

    def reservoir_add(self, features: Tensor, labels: Tensor, task_id: int, generator: torch.Generator,
                      images: Tensor | None = None) -> None:
        """``reservoir``: classic reservoir sampling over every sample observed (engine/reservoir.py's rule)."""
        for i in range(features.shape[0]):
            self.seen += 1
            slot = reservoir_slot(self.seen, self.buffer_size, generator)
            if slot is None:
                continue
            if slot >= len(self):
                f = features[i: i + 1].detach().clone()
                self.features = f if self.features is None else torch.cat([self.features, f])
                if images is not None:
                    im = images[i: i + 1].detach().clone()
                    self.images = im if self.images is None else torch.cat([self.images, im])
                lab = labels[i: i + 1].detach().clone()
                self.labels = lab if self.labels is None else torch.cat([self.labels, lab])
                o = torch.tensor([int(task_id)])
                self.origin = o if self.origin is None else torch.cat([self.origin, o])
                v = torch.zeros(1, dtype=torch.bool)
                self.target_valid = v if self.target_valid is None else torch.cat([self.target_valid, v])
                for name in list(self.targets):  # keep shapes aligned; the new row has no target yet
                    t = self.targets[name]
                    self.targets[name] = torch.cat([t, torch.zeros_like(t[:1])])
            else:
                self.features[slot] = features[i].detach()
                if images is not None and self.images is not None:
                    self.images[slot] = images[i].detach()
                self.labels[slot] = labels[i]
                self.origin[slot] = int(task_id)
                self.target_valid[slot] = False

    def snapshot(self) -> dict:
        """The buffer as it is (references: ``set_buffer``/``record_targets`` replace tensors, never write into them)."""
        return {"features": self.features, "images": self.images, "labels": self.labels, "origin": self.origin,
                "targets": dict(self.targets), "target_valid": self.target_valid}

    def restore(self, snap: dict) -> None:
        for k, v in snap.items():
            setattr(self, k, v)

    def record_targets(self, taps: dict[str, Tensor], valid: Tensor | None = None) -> None:
        self.targets = {k: v.detach().clone() for k, v in taps.items()}
        self.target_valid = torch.ones(len(self), dtype=torch.bool) if valid is None else valid.clone()

    # ---- masks
    def update_masks(self, taps: dict[str, Tensor]) -> None:
        for name, act in taps.items():
            if act.dim() != 4:
                continue  # logits are regularised unmasked
            m = vital_channels(act, self.ratio)
            self.masks[name] = m if name not in self.masks else (self.masks[name] | m)

    # ---- the regulariser
    def active(self) -> bool:
        return len(self) > 0 and bool(self.targets) and bool(self.target_valid is not None and self.target_valid.any())

    def penalty(self, taps: dict[str, Tensor], beta: float) -> Tensor:
        """beta * sum over taps of sum_(n,c,h,w) mask_c (F_new - F_old)^2; logits unmasked. Sums, not means."""
        total = None
        valid = self.target_valid
        for name, new in taps.items():
            old = self.targets[name]
            diff = new - old
            if valid is not None and not bool(valid.all()):
                diff = diff[valid]
            if diff.dim() == 4 and self.ratio < 1.0 and name in self.masks:
                diff = diff * self.masks[name].to(diff.dtype).view(1, -1, 1, 1)
            term = beta * diff.pow(2).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    # ---- state
    def tensors(self) -> dict[str, Tensor]:
        """The tensor entries of :meth:`state_dict` (CPU, contiguous)."""
        out: dict[str, Tensor] = {}
        if self.features is not None:
            out["buffer.features"] = self.features
            if self.images is not None:
                out["buffer.images"] = self.images
            out["buffer.labels"] = self.labels
            out["buffer.origin"] = self.origin
            out["buffer.target_valid"] = self.target_valid.to(torch.uint8)
        for k, v in self.targets.items():
            out[f"target.{k}"] = v
        for k, v in self.masks.items():
            out[f"mask.{k}"] = v.to(torch.uint8)
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything the memory holds, flat like a module's: ``buffer.*``, ``target.<tap>``, ``mask.<tap>``
        tensors (bool as uint8) and ``seen`` (samples offered to the reservoir)."""
        return {**self.tensors(), "seen": int(self.seen)}

    def load_state_dict(self, state: Mapping[str, Any], *, in_features: Sequence[int] | None = None,
                        tap_shapes: Mapping[str, Sequence[int]] | None = None, num_classes: int | None = None,
                        known_labels: Iterable[int] | None = None, image_shape: Sequence[int] | None = None,
                        device: torch.device | str = "cpu", where: str = "memory state") -> None:
        """Replace the memory by ``state`` after checking every entry (names, dtypes, shapes, finite values,
        and, where given, the head's feature and tap shapes and the known labels). Raises IntegrityError
        and changes nothing on a bad entry."""
        state = dict(state)
        seen = state.pop("seen", 0)
        if isinstance(seen, bool) or not isinstance(seen, int) or not 0 <= seen < (1 << 63):
            raise IntegrityError(f"{where}: seen must be a non-negative integer, got {str(seen)[:40]!r}")
        for k, v in state.items():
            if not isinstance(v, Tensor):
                raise IntegrityError(f"{where}: {k} must be a tensor")
        buf = [k for k in BUFFER_KEYS if k in state]
        if buf and len(buf) != len(BUFFER_KEYS):
            raise IntegrityError(f"{where}: buffer tensors incomplete ({', '.join(buf)})")
        n = None
        if buf:
            f = state["buffer.features"]
            n = int(f.shape[0]) if f.dim() else -1
            if f.dtype != torch.float32 or f.dim() != 4 or not bool(torch.isfinite(f).all()) \
                    or (in_features is not None and tuple(f.shape[1:]) != tuple(in_features)):
                raise IntegrityError(f"{where}: buffer.features must be finite float32 "
                                     f"[N, {list(in_features) if in_features is not None else 'C, H, W'}]")
            if n > self.buffer_size:
                raise IntegrityError(f"{where}: {n} buffered samples for a buffer of {self.buffer_size}")
            for k, dt in (("buffer.labels", torch.int64), ("buffer.origin", torch.int64),
                          ("buffer.target_valid", torch.uint8)):
                if state[k].dtype != dt or list(state[k].shape) != [n]:
                    raise IntegrityError(f"{where}: {k} must be {dt} [{n}], got {state[k].dtype} {list(state[k].shape)}")
            if bool((state["buffer.target_valid"] > 1).any()):
                raise IntegrityError(f"{where}: buffer.target_valid must hold 0/1")
            if known_labels is not None and not set(state["buffer.labels"].tolist()) <= set(known_labels):
                raise IntegrityError(f"{where}: buffer.labels holds classes the state never learned")
        images = state.get("buffer.images")
        if images is not None:
            if n is None or images.dtype != torch.float32 or images.dim() != 4 or images.shape[0] != n \
                    or (image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape)) \
                    or not bool(torch.isfinite(images).all()):
                raise IntegrityError(f"{where}: buffer.images must be finite float32 [{n}, C, H, W] images of the buffer")
        for k, v in state.items():
            kind, _, rest = k.partition(".")
            if k in BUFFER_KEYS or k == "buffer.images":
                continue
            if kind == "target":
                if n is None or v.dtype != torch.float32 or v.dim() < 1 or v.shape[0] != n \
                        or (tap_shapes is not None and rest not in tap_shapes):
                    raise IntegrityError(f"{where}: {k} does not fit the head's taps or the buffer")
                if rest == "logits":
                    ok = v.dim() == 2 and (num_classes is None or v.shape[1] <= num_classes)
                else:
                    ok = tap_shapes is None or tuple(v.shape[1:]) == tuple(tap_shapes[rest])
                if not ok or not bool(torch.isfinite(v).all()):
                    want = list(tap_shapes[rest]) if tap_shapes is not None else "?"
                    raise IntegrityError(f"{where}: {k} has shape {list(v.shape)}, the head's tap gives {want}")
            elif kind == "mask":
                ok = rest != "logits" and v.dtype == torch.uint8 and v.dim() == 1 and not bool((v > 1).any())
                if tap_shapes is not None:
                    ok = ok and rest in tap_shapes and list(v.shape) == [tap_shapes[rest][0]]
                if not ok:
                    raise IntegrityError(f"{where}: {k} must be a 0/1 uint8 mask of the tap's channels")
            else:
                raise IntegrityError(f"{where}: unexpected tensor {k}")
        t = {k: v.to(device) for k, v in state.items()}
        self.features = t.get("buffer.features")
        self.images = t.get("buffer.images")
        self.labels = t.get("buffer.labels")
        self.origin = t.get("buffer.origin")
        tv = t.get("buffer.target_valid")
        self.target_valid = tv.bool() if tv is not None else None
        self.targets = {k[len("target."):]: v for k, v in t.items() if k.startswith("target.")}
        self.masks = {k[len("mask."):]: v.bool() for k, v in t.items() if k.startswith("mask.")}
        self.seen = seen

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.tensors().values())
