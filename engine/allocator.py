"""A lean glibc malloc for the learning process: a fixed mmap threshold and few arenas.

Why: ``lightcl bench update --ledger`` showed that the largest unexplained part of the update step's
peak RSS is not a tensor but glibc's retained heap. glibc raises its mmap threshold each time a large
mmapped block is freed (the "dynamic threshold", up to 32 MiB on 64-bit), so after the first steps
every activation, gradient and onnxruntime run buffer comes from the heap, and freed heap is kept by
the process (per thread arena, too). Fixing the threshold at 64 KiB makes every block of 64 KiB or
more its own mapping, returned to the OS the moment it is freed; two arenas bound the per-thread
heaps. This is what ``MALLOC_MMAP_THRESHOLD_=65536 MALLOC_ARENA_MAX=2`` do (glibc's documented
tunables, ``man 3 mallopt``), applied from inside the process with ``mallopt(3)`` so that no
launcher has to set them.

Process-wide, so: applied once, only on glibc (a no-op elsewhere: musl, macOS, Windows), never over
settings the user made (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_ARENA_MAX`` / ``GLIBC_TUNABLES`` in
the environment win), and OPT-IN on generic profiles: ``LIGHTCL_MALLOC=lean`` before the first learner/extractor is made (or
``apply_lean_malloc(enable=True)``). ``LIGHTCL_MALLOC=arenas`` caps the arenas only and keeps glibc's
dynamic threshold (no extra page faults, a smaller saving). It made the dense width-64 update step about
1.5-1.7x slower (docs/results/ledger.md) for a 26-35 % lower peak: a device short of memory wants it, one
short of time does not. So the device profile decides: an export made with ``--profile jetson-nano`` (4 GB
shared by CPU and GPU) turns it on by default when the extractor is loaded (``LEAN_PROFILES``), every other
profile keeps glibc's defaults, and ``LIGHTCL_MALLOC=system|lean`` overrides either way.

The price is page faults: a block that is its own mapping comes back as fresh zeroed pages every time
it is allocated again, so a step that allocates and frees large tensors spends more time in the kernel.
Peak RSS, CPU time and minor faults per step, with and without, are in docs/results/ledger.md. Its pass 4
ledger measures what this buys with glibc's own accounting (``mallinfo2``): the "freed heap kept by malloc" at
the dense step's peak, 27-41 MiB with glibc's defaults, is -0.1 MiB with ``LIGHTCL_MALLOC=lean``; nothing else moves.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from typing import Any, Dict, Optional

# mallopt(3) parameter numbers, glibc malloc/malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

DEFAULT_MMAP_THRESHOLD = 64 * 1024
DEFAULT_ARENA_MAX = 2
ENV = "LIGHTCL_MALLOC"  # "system" (glibc's own behaviour) | "lean" | "arenas"; unset: the profile's default
#: export profiles (meta.json ``profile``) whose default is the lean allocator: memory over time
LEAN_PROFILES = ("jetson-nano",)
_USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_lock = threading.Lock()
_state: Optional[Dict[str, Any]] = None


@functools.lru_cache(maxsize=None)
def glibc():
    """The process's glibc (``mallopt`` + ``gnu_get_libc_version``), or None when libc is not glibc. One handle
    for every caller (the lean allocator here, the benchmark's ``malloc_trim`` and ``mallinfo`` meters)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ver = libc.gnu_get_libc_version
        ver.restype = ctypes.c_char_p
        ver()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def apply_lean_malloc(enable: Optional[bool] = None, mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
                      arena_max: int = DEFAULT_ARENA_MAX, profile: Optional[str] = None) -> Dict[str, Any]:
    """Set glibc's mmap threshold and arena count once per process; later calls return the first result.

    ``enable=None`` follows ``$LIGHTCL_MALLOC``; unset, the device profile decides (:data:`LEAN_PROFILES`:
    an export made with ``--profile jetson-nano`` is for a device short of memory, so lean is its default; every
    other profile keeps glibc's defaults). ``LIGHTCL_MALLOC=system`` turns it off on any profile. ``False``
    records an opt-out so that later calls (the engine's own) leave the allocator alone. Returns what was done,
    for ``info()`` records.
    """
    global _state
    with _lock:
        if _state is not None:
            return dict(_state)
        env = os.environ.get(ENV, "").strip().lower()
        by_profile = False
        if enable is None:
            enable = env in ("lean", "arenas", "on", "1", "yes", "true")
            if not env and profile in LEAN_PROFILES:
                enable = by_profile = True
        if env == "arenas":  # the arena cap only, glibc's dynamic mmap threshold kept
            mmap_threshold = 0
        state: Dict[str, Any] = {"lean": False, "mmap_threshold": None, "arena_max": None}
        user = [k for k in _USER_ENV if os.environ.get(k) and (k != "GLIBC_TUNABLES" or "malloc" in os.environ[k])]
        libc = glibc() if enable else None
        if not enable:
            state["reason"] = f"glibc defaults ({ENV}={env or 'unset'})"
        elif user:
            state["reason"] = f"left to the user's {', '.join(user)}"
        elif libc is None:
            state["reason"] = "not glibc: nothing to do"
        else:
            ok_t = libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1 if mmap_threshold else True
            ok_a = libc.mallopt(M_ARENA_MAX, int(arena_max)) == 1
            state.update(lean=ok_t and ok_a, mmap_threshold=int(mmap_threshold) if ok_t else None,
                         arena_max=int(arena_max) if ok_a else None,
                         reason=("mallopt refused a setting" if not (ok_t and ok_a) else
                                 f"mallopt applied (the {profile} profile's default)" if by_profile
                                 else "mallopt applied"))
        _state = state
        return dict(state)


def release_free_heap() -> bool:
    """``malloc_trim(0)``: give the heap's free pages back to the OS (glibc >= 2.8 also releases free pages
    inside the heap, not only at its top). Cheap once, after a one-time burst of temporaries such as an
    onnxruntime session's creation; done only when the lean allocator is on."""
    with _lock:
        if not (_state or {}).get("lean"):
            return False
    libc = glibc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


def malloc_state() -> Dict[str, Any]:
    """What :func:`apply_lean_malloc` did in this process (``{"lean": False, "reason": "not applied"}`` before)."""
    with _lock:
        return dict(_state) if _state is not None else {"lean": False, "reason": "not applied"}


__all__ = ["apply_lean_malloc", "glibc", "malloc_state", "ENV", "LEAN_PROFILES", "DEFAULT_MMAP_THRESHOLD",
           "DEFAULT_ARENA_MAX"]
