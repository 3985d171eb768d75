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


# the shared flags each verb had before the argument groups, by name (names and meaning stay)
SHARED_FLAGS = {
    "info": ["--json"],
    "pretrain": ["--threads", "--batch-size", "--json"],
    "export": ["--json"],
    "learn": ["--backend", "--device", "--threads", "--batch-size", "--json"],
    "predict": ["--backend", "--device", "--threads", "--batch-size", "--json"],
    "analyze": ["--threads", "--batch-size"],
    "demo": ["--backend"],
    "bench latency": ["--backend", "--device", "--threads", "--batch", "--json"],
    "bench update": ["--threads", "--batch", "--json"],
    "bench suite": ["--backend", "--device", "--threads"],
}


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_verb_uses_the_shared_groups_with_registry_choices():
    from lightcl.cli import build_parser
    from lightcl.engine.extractors.registry import choices

    parser, _ = build_parser()
    verbs = _subparsers(parser)
    for key, flags in SHARED_FLAGS.items():
        words = key.split()
        p = verbs[words[0]]
        if len(words) == 2:
            p = _subparsers(p)[words[1]]
        text = p.format_help()
        actions = {s: a for a in p._actions for s in a.option_strings}
        for flag in flags:
            assert flag in actions and actions[flag].help, (key, flag)
            group = next(g.title for g in p._action_groups if actions[flag] in g._group_actions)
            assert group in ("extractor", "runtime", "output"), (key, flag, group)
        if "--backend" in flags and key != "bench latency":
            assert tuple(actions["--backend"].choices) == choices(), key
        assert all(flag in text for flag in flags), key  # --help stays complete
