"""Where lightcl keeps its caches: one rule for every layer (datasets, exports, TensorRT plans)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$LIGHTCL_CACHE`` if set and non-empty, else ``~/.cache/lightcl``; ``~`` expanded, made absolute.

    An empty variable counts as unset and a relative one is resolved against the current directory
    once, here, so no cache (TensorRT plans included) lands somewhere the caller did not mean.
    """
    env = os.environ.get("LIGHTCL_CACHE", "").strip()
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "lightcl"
    return base.absolute().joinpath(*parts)
