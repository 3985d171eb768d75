"""This process's resident memory (current and peak, from /proc where it exists): ``lightcl learn`` reports its
peak and the benchmark's meters (lightcl.bench.meters) build on the same readings."""
from __future__ import annotations

import resource
import sys

MIB = float(1 << 20)


def status_kib(field: str) -> float | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def peak_mib() -> float:
    """Peak RSS of this process in MiB (VmHWM: resettable by the benchmark; else getrusage's maximum)."""
    v = status_kib("VmHWM")
    if v is not None:
        return v / 1024.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0
