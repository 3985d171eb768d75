"""Overlap: the next batch's frozen features extracted while the head trains on this one.

Why: the update step is extraction (the frozen part, an inference runtime) then the head's forward, backward
and update (torch). The two use different thread pools (onnxruntime's and torch's), and onnxruntime's run
releases the GIL, so on a device with spare cores the extraction of batch ``i+1`` can run during the head's
step on batch ``i``. A bounded queue of one batch keeps memory at one extra batch of features (a 256x14x14
feature map is 200 KB per image at 224x224).

Identical to the sequential loop: the features of a batch are the same whenever they are computed (eval-mode
frozen BN; the extractor is a pure function of the batch), and :meth:`LightCL.observe` takes them as given.
With train-mode frozen BN (``frozen_bn="train"``) extraction updates the frozen statistics in the order
buffer-then-batch inside each step, so overlapping would reorder it: refused.

Threads: give the extractor and torch separate shares of the cores (e.g. 2 cores: onnxruntime 1 thread,
``torch.set_num_threads(1)``), else the two pools oversubscribe the cores and the overlap buys nothing.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple

from torch import Tensor

from .errors import InputError

_END = object()


class FeaturePrefetcher:
    """Iterate ``batches`` of ``(x, y)``; yield ``(x, y, features)`` with up to ``depth`` batches extracted ahead
    by one background thread. An exception in the thread is raised at the batch it belongs to. Use as an
    iterator (once) or a context manager; :meth:`close` stops the thread (also on ``break``)."""

    def __init__(self, extract: Callable[[Tensor], Tensor], batches: Iterable[Tuple[Any, ...]], depth: int = 1) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise InputError(f"prefetch depth must be a positive integer, got {depth!r}")
        self._extract = extract
        self._batches = batches
        self._q: "queue.Queue" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._used = False

    def _work(self) -> None:
        try:
            for batch in self._batches:
                if self._stop.is_set():
                    return
                x = batch[0]
                item = (tuple(batch), self._extract(x), None)
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the consumer, raised there
            self._put_final((None, None, e))
            return
        self._put_final(_END)

    def _put_final(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[Tuple[Any, ...]]:
        if self._used:
            raise InputError("a FeaturePrefetcher is iterated once")
        self._used = True
        self._thread = threading.Thread(target=self._work, name="lightcl-prefetch", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._q.get()
                if item is _END:
                    return
                batch, feats, err = item
                if err is not None:
                    raise err
                yield (*batch, feats)
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            while t.is_alive():
                try:  # unblock a producer waiting on a full queue
                    self._q.get_nowait()
                except queue.Empty:
                    pass
                t.join(timeout=0.05)

    def __enter__(self) -> "FeaturePrefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["FeaturePrefetcher"]
