"""One typed config per method is the single source of its defaults; the cited JSON configs agree with it."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from lightcl.bench.methods import METHODS, REGISTRY, TABLE_ORDER, config_class
from lightcl.bench.methods import configs as _configs
from lightcl.bench.suite import CONFIG_DIR, check_method_config, load_config
from lightcl.engine.errors import InputError
from lightcl.engine.learner import LightCLConfig


def defaults(method: str) -> dict:
    return _configs.defaults(config_class(method))


def make_config(method: str, hp: dict):
    return _configs.make_config(method, hp, cls=config_class(method))


def _doc(method: str) -> dict:
    return json.loads((CONFIG_DIR / f"{method}.json").read_text())


def test_every_method_has_a_typed_config_and_a_cited_json():
    """Every registered method declares a dataclass config; the benchmark's own (Table 1's rows) cite theirs."""
    assert set(TABLE_ORDER) <= set(REGISTRY)
    for m in METHODS:
        assert dataclasses.is_dataclass(config_class(m))
    for m in TABLE_ORDER:
        doc = _doc(m)
        assert doc["method"] == m and doc["source"]
    assert not set(p.stem for p in CONFIG_DIR.glob("*.json")) - set(REGISTRY)  # no orphan JSON


def _disagreements(method: str, doc: dict) -> list[str]:
    """Every key of the JSON's ``default`` must be a field with the same value as the dataclass default; a
    scenario entry is an explicit, cited override whose keys are fields too."""
    code, bad = defaults(method), []
    for key, value in doc["default"].items():
        if key not in code:
            bad.append(f"{method}.json: {key} is not a field of {config_class(method).__name__}")
        elif code[key] != value:
            bad.append(f"{method}: the JSON default {key}={value!r}, the code's {code[key]!r}")
    for scen, entry in doc.get("scenarios", {}).items():
        if not entry.get("source"):
            bad.append(f"{method}.json: scenario {scen} overrides without a source")
        bad += [f"{method}.json: scenario {scen}: {k} is not a field" for k in set(entry) - {"source"} - set(code)]
    return bad


@pytest.mark.parametrize("method", TABLE_ORDER)
def test_json_defaults_are_the_code_defaults(method):
    assert _disagreements(method, _doc(method)) == []


def test_engine_methods_share_the_learners_defaults():
    assert config_class("lightcl") is LightCLConfig
    ref, lc = defaults("lightcl-reference"), dataclasses.asdict(LightCLConfig())
    assert {k: ref[k] for k in ("lr", "beta", "buffer_size", "ratio")} == {k: lc[k] for k in ("lr", "beta",
                                                                                             "buffer_size", "ratio")}
    assert issubclass(config_class("lightcl-sparse"), LightCLConfig)


def test_a_disagreement_fails_the_check():
    """The check above is not vacuous: the values the code and the JSON disagreed on before are caught."""
    doc = _doc("lwf")
    doc["default"]["alpha"] = 1.0  # the old code default (Mammoth's seq-tinyimg value)
    assert _disagreements("lwf", doc) == ["lwf: the JSON default alpha=1.0, the code's 3.0"]
    doc = _doc("er")
    doc["default"]["bufer_size"] = 15
    del doc["scenarios"]["paper-tinyimg"]["source"]
    assert len(_disagreements("er", doc)) == 2


def test_the_code_reads_its_defaults_from_the_config():
    from lightcl.bench.methods.configs import LwFConfig, SparCLConfig

    assert make_config("lwf", {}).alpha == LwFConfig().alpha == 3.0
    c = make_config("sparcl-er", {"sparsity": 0.8})
    assert c.lower_bound == [0.8, 0.8 + 0.01, 0.8] and c.upper_bound == [0.8 - 0.01, 0.8, 0.8]
    assert SparCLConfig().lower_bound == [0.9, 0.91, 0.9]
    assert make_config("er", {"buffer_size": 20.0, "lr": 1}).buffer_size == 20  # JSON numbers coerced


def test_unknown_or_mistyped_keys_are_one_line():
    with pytest.raises(InputError, match=r"er: unknown hyperparameter\(s\) \['bufer_size'\]"):
        make_config("er", {"bufer_size": 5})
    with pytest.raises(InputError, match="buffer_size must be int"):
        make_config("er", {"buffer_size": "big"})
    with pytest.raises(InputError, match="buffer_size must be int"):
        make_config("er", {"buffer_size": 2.5})


def test_user_method_config_file_and_dir(tmp_path):
    good = tmp_path / "er.json"
    good.write_text(json.dumps({"method": "er", "source": "mine", "default": {"lr": 0.05, "buffer_size": 30}}))
    check_method_config(good)
    cfg = load_config("er", "smoke", good)
    assert cfg["hyperparameters"] == {"lr": 0.05, "buffer_size": 30} and cfg["source"] == "mine"
    assert load_config("sgd", "smoke", good)["file"] == "sgd.json"  # other methods keep the cited config
    bad = tmp_path / "d"
    bad.mkdir()
    (bad / "lwf.json").write_text(json.dumps({"default": {"alpha": 1.0}, "scenarios": {"smoke": {"temp": 2}}}))
    with pytest.raises(InputError, match=r"unknown hyperparameter\(s\) \['temp'\] for lwf in scenarios.smoke"):
        check_method_config(bad)
    (bad / "lwf.json").write_text(json.dumps({"default": {"alpha": "high"}}))
    with pytest.raises(InputError, match="default: lwf: hyperparameter alpha must be float, got 'high'"):
        check_method_config(bad)
    (bad / "lwf.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        check_method_config(bad)
    (bad / "lwf.json").unlink()
    (bad / "nope.json").write_text("{}")
    with pytest.raises(InputError, match="'nope' is not a method"):
        check_method_config(bad)
    with pytest.raises(InputError, match="no such file"):
        check_method_config(tmp_path / "missing.json")


def test_cli_method_config_typo_is_one_line(tmp_path):
    cfg = tmp_path / "er.json"
    cfg.write_text(json.dumps({"default": {"lr": 0.05, "minibatch": 8}}))
    r = subprocess.run([sys.executable, "-m", "lightcl", "bench", "--suite", "smoke", "--methods", "er",
                        "--method-config", str(cfg), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(err) == 1 and "unknown hyperparameter(s) ['minibatch']" in err[0], r.stderr
    assert not (tmp_path / "o").exists()
