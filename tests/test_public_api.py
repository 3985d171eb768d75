"""The package face: every name in ``lightcl.__all__`` imports, lazily (``import lightcl`` loads no torch)."""
from __future__ import annotations

import subprocess
import sys

import pytest


def test_every_public_name_imports():
    import lightcl

    assert "LightCL" in lightcl.__all__ and "load_extractor" in lightcl.__all__
    for name in lightcl.__all__:
        assert getattr(lightcl, name) is not None, name
        assert name in dir(lightcl)
    from lightcl import LightCL, LightCLError, load_extractor  # noqa: F401  (what the README shows)
    from lightcl.engine.errors import LightCLError as Base
    from lightcl.engine.learner import LightCL as Learner

    assert LightCL is Learner and LightCLError is Base
    with pytest.raises(AttributeError):
        lightcl.no_such_name  # noqa: B018


def test_star_import_gives_all():
    ns: dict = {}
    exec("from lightcl import *", ns)
    import lightcl

    assert set(lightcl.__all__) <= set(ns)


def test_import_lightcl_stays_light():
    code = ("import sys, lightcl\n"
            "heavy = [m for m in ('torch', 'onnxruntime', 'numpy', 'lightcl.engine.learner') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "lightcl.load_extractor\n"
            "assert 'lightcl.engine.extractors' in sys.modules\n"
            "assert 'lightcl.bench' not in sys.modules and 'lightcl.export' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
