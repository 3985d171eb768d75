"""Memory meters shared by every benchmark: current and peak RSS, peak reset, and the warm-up that
makes "idle" mean "after imports and the libraries' first-use initialisation" in every process alike."""
from __future__ import annotations

import sys

from lightcl.engine.rss import MIB, peak_mib, status_kib as _status_kib  # noqa: F401  (one reading for learn and bench)


def rss_mib() -> float:
    v = _status_kib("VmRSS")
    if v is not None:
        return v / 1024.0
    import psutil

    return psutil.Process().memory_info().rss / MIB


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    """Give freed heap back to the OS, so the idle RSS is not inflated by memory the method would reuse
    (glibc only; a no-op elsewhere)."""
    from lightcl.engine.allocator import glibc

    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def warm_up(input_shape) -> None:
    """Run one tiny training step in torch and one tiny conv in onnxruntime, then free everything,
    so that the idle RSS includes the library code every method pages in on its first step."""
    import numpy as np
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(input_shape[0], 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(2, *input_shape)
    net.train()
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1])) + net(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        net(x)
    try:
        import onnx  # noqa: F401  (present, or the probe below is skipped)
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        w = numpy_helper.from_array(np.zeros((4, input_shape[0], 3, 3), dtype=np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
            "warm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *input_shape])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 4
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        sess.run(None, {"x": np.zeros((2, *input_shape), dtype=np.float32)})
        del sess, model
    except Exception:  # onnxruntime missing or unusable: the engine methods will say so themselves
        pass
    faiss = sys.modules.get("faiss")  # loaded by the method module that uses it (remind): its first k-means too
    if faiss is not None:
        pq = faiss.ProductQuantizer(16, 1, 8)
        pq.train(np.random.default_rng(0).standard_normal((9984, 16), dtype=np.float32))
        del pq
    del net, opt, x, loss


# --------------------------------------------------------------------------- malloc's own accounting
_MALLINFO_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                    "keepcost")
_mallinfo_fn = None  # (callable, source) once looked up; (None, reason) when not available


def _mallinfo_lookup():
    """glibc's ``mallinfo2`` (>= 2.33, size_t fields) or the older ``mallinfo`` (int fields: wrap past 2 GiB), or
    ``(None, reason)`` on a libc without either (musl, macOS, Windows)."""
    global _mallinfo_fn
    if _mallinfo_fn is not None:
        return _mallinfo_fn
    import ctypes

    from lightcl.engine.allocator import glibc

    libc = glibc()  # glibc only: musl has a mallinfo with a different meaning
    if libc is None:
        _mallinfo_fn = (None, "not available (not glibc)")
        return _mallinfo_fn
    for name, ctype in (("mallinfo2", ctypes.c_size_t), ("mallinfo", ctypes.c_int)):
        fn = getattr(libc, name, None)
        if fn is None:
            continue

        class _Info(ctypes.Structure):
            _fields_ = [(f, ctype) for f in _MALLINFO_FIELDS]

        fn.restype = _Info
        fn.argtypes = []
        _mallinfo_fn = (fn, name)
        return _mallinfo_fn
    _mallinfo_fn = (None, "not available (glibc without mallinfo)")
    return _mallinfo_fn


def mallinfo_source() -> str:
    """Which call :func:`mallinfo` uses: ``mallinfo2``, ``mallinfo`` or ``not available (...)``."""
    return _mallinfo_lookup()[1]


def mallinfo() -> "dict[str, int] | None":
    """glibc's own accounting of its heap, bytes, summed over every arena (``man 3 mallinfo2``): ``arena`` (heap
    bytes got from the OS with brk/mmap'd heaps), ``hblkhd`` (bytes in blocks mmapped on their own),
    ``uordblks`` (heap bytes in use), ``fordblks`` (heap bytes free: freed and kept by malloc). ``None`` where
    not available. Free bytes may include pages ``malloc_trim`` already gave back (they stay in the free lists,
    not resident), so callers take free bytes as a delta from a sample taken right after a trim."""
    fn, _ = _mallinfo_lookup()
    if fn is None:
        return None
    mi = fn()
    return {f: int(getattr(mi, f)) for f in _MALLINFO_FIELDS}


def rss_parts() -> "dict[str, float]":
    """Resident memory by kind, MiB, from /proc/self/status (Linux >= 4.5): ``anon`` (heap, mmapped blocks,
    stacks), ``file`` (pages of mapped files: libraries' code and data), ``shmem``; ``rss`` the total. Empty on
    other systems."""
    out = {}
    for key, field in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"), ("shmem", "RssShmem")):
        v = _status_kib(field)
        if v is not None:
            out[key] = v / 1024.0
    return out
