"""``--method-config`` validated completely up front (issue 21, items 5 and 7): ranges per field, the JSON bounds
(64 MiB with a bounded read, nesting), the document's other values (``source``, ``note``, ``version``), and
files that are not regular files; every refusal is one line before any work, nothing written."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hostile_util import cli, count, report_hostile_counts, watchdog  # noqa: F401


def test_every_config_field_has_a_range_and_the_cited_configs_pass():
    from lightcl.bench.config_check import field_names_without_range
    from lightcl.bench.methods import METHODS, config_class
    from lightcl.bench.scenarios import SCENARIOS
    from lightcl.bench.suite import load_config

    configs = {m: config_class(m) for m in METHODS}
    assert len(configs) >= 14 and field_names_without_range(configs) == []
    for m in configs:
        for s in SCENARIOS:
            load_config(m, s)  # the cited configs are inside every range


def _deep(n: int, leaf=0):
    v = leaf
    for _ in range(n):
        v = [v]
    return v


BAD_HP = [
    ("er", {"buffer_size": -5}), ("sgd", {"lr": -1}), ("sgd", {"lr": 0}), ("sgd", {"lr": 1e308}),
    ("sgd", {"momentum": 2}), ("sgd", {"weight_decay": -0.1}), ("ewc", {"gamma": -1}), ("ewc", {"fisher_samples": 0}),
    ("ewc", {"e_lambda": -3}), ("er", {"minibatch_size": 0}), ("derpp", {"alpha": -1}), ("derpp", {"beta": -0.5}),
    ("lwf", {"softmax_temp": 0}), ("fdr", {"alpha": -1}), ("latent-replay", {"buffer_size": 10 ** 12}),
    ("sparcl-er", {"sparsity": 1.5}), ("sparcl-er", {"lower_bound": [2.0, 0.5, 0.5]}),
    ("sparcl-er", {"bound_points": []}), ("sparcl-er", {"mask_update_every": 0}),
    ("sparcl-er", {"sample_frequency": 0}), ("sparcl-derpp", {"remove_fraction": 1.5}),
    ("sparcl-er", {"buffer_weight": -1}), ("lightcl", {"ratio": 0}), ("lightcl", {"ratio": 1.5}),
    ("lightcl", {"buffer_policy": "bogus"}), ("lightcl", {"beta": -1}), ("lightcl-reference", {"buffer_size": -1}),
    ("lightcl-reference", {"lr": -0.01}), ("lightcl-sparse", {"sparsity": "most"}),
    ("lightcl-sparse", {"round_channels": 0}), ("lightcl-sparse", {"recover_epochs": -1}),
    ("lightcl-sparse", {"ratio": 0}), ("pnn", {"lr": -1}), ("joint", {"lr": -1}),
]


def _write(d: Path, method: str, doc) -> Path:
    p = d / f"{method}.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def _refused(path) -> str:
    from lightcl.bench.suite import check_method_config
    from lightcl.engine.errors import InputError, LightCLError

    with watchdog(20):
        with pytest.raises(LightCLError) as e:
            check_method_config(path)
    assert isinstance(e.value, InputError) or "config" in str(e.value)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 1000, msg
    return msg


def test_out_of_range_hyperparameters_are_refused_in_default_and_scenario_entries(tmp_path):
    for i, (method, hp) in enumerate(BAD_HP):
        d = tmp_path / f"d{i}"
        d.mkdir()
        for where in ("default", "scenario"):
            doc = {"method": method, "default": hp} if where == "default" else \
                {"method": method, "scenarios": {"smoke": {**hp, "source": "x"}}}
            msg = _refused(_write(d, method, doc))
            assert next(iter(hp)) in msg, msg
            count("silent nonsense", "method-config values out of range")


DOCS = {
    "source nested 50 deep": {"method": "sgd", "source": _deep(50, "x")},
    "source an object": {"method": "sgd", "source": {"a": 1}},
    "scenario source nested": {"method": "sgd", "scenarios": {"smoke": {"source": _deep(40, "x")}}},
    "note 100,000 characters": {"method": "sgd", "note": "n" * 100_000},
    "version negative": {"method": "sgd", "version": -1},
    "version a string": {"method": "sgd", "version": "1"},
    "unknown top-level key": {"method": "sgd", "hyperparams": {"lr": 0.1}},
    "method a list": {"method": ["sgd"]},
    "nested past 64": {"method": "sgd", "default": {"lr": 0.1}, "x": _deep(70)},
    "nested 100,000 deep": "[" * 100_000 + "]" * 100_000,
    "object nested 100,000 deep": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "huge integer": '{"method": "sgd", "default": {"lr": ' + "9" * 100_000 + "}}",
    "not UTF-8": b'{"method": "\xff\xfe"}',
    "NaN lr": '{"method": "sgd", "default": {"lr": NaN}}',
    "Infinity momentum": '{"method": "sgd", "default": {"momentum": Infinity}}',
}


def test_malformed_documents_are_one_line(tmp_path):
    for i, (name, doc) in enumerate(DOCS.items()):
        d = tmp_path / f"d{i}"
        d.mkdir()
        p = d / "sgd.json"
        if isinstance(doc, bytes):
            p.write_bytes(doc)
        else:
            _write(d, "sgd", doc)
        _refused(p)
        count("tracebacks", "malformed method-config documents")


def test_files_that_are_not_configs_are_refused_without_reading_them(tmp_path):
    big = tmp_path / "big" / "sgd.json"
    big.parent.mkdir()
    with open(big, "wb") as f:  # sparse: 256 MiB claimed, nothing read (the bound is checked first)
        f.truncate(256 << 20)
    assert "bytes" in _refused(big)
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "sgd.json")
    _refused(fifo_dir / "sgd.json")  # the file itself
    _refused(fifo_dir)  # a directory holding a FIFO named METHOD.json
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    _refused(loop)
    sub = tmp_path / "sub"
    (sub / "sgd.json").mkdir(parents=True)
    _refused(sub)  # a directory named METHOD.json inside the config directory
    for _ in range(5):
        count("hangs", "method-config: FIFO, huge, loop, directory")


def test_cli_refuses_before_any_work_and_writes_nothing(tmp_path):
    d = tmp_path / "cfg"
    d.mkdir()
    _write(d, "er", {"method": "er", "default": {"buffer_size": -5}})
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "er.json").write_text("[" * 100_000 + "]" * 100_000)
    for cfg in (d / "er.json", tmp_path / "deep" / "er.json"):
        out = tmp_path / f"out-{cfg.parent.name}"
        rc, _o, err = cli(["bench", "--suite", "smoke", "--methods", "er", "--method-config", cfg, "--out", out,
                           "--no-plots", "--quiet"])
        assert rc not in (0, None), err
        assert not out.exists()
        count("tracebacks", "method-config through the CLI")


@pytest.mark.parametrize("address, code", [("127.0.0.1:1", 1), ("ray://127.0.0.1:1", 3), ("not an address", 1),
                                           ("127.0.0.1:99999", 1), ("ray://", 1)])
def test_ray_address_unreachable_or_without_client_is_one_line_in_bounded_time(tmp_path, address, code):
    """`--executor ray --address 127.0.0.1:1` used to never exit; `ray://` without ray[client] was a traceback."""
    import importlib.util
    import time

    if address.startswith("ray://127") and importlib.util.find_spec("grpc") is not None:
        code = 1  # the client extra is installed here: the connection is what fails
    t0 = time.monotonic()
    with watchdog(60):
        rc, _o, err = cli(["bench", "--suite", "smoke", "--methods", "sgd", "--executor", "ray", "--address", address,
                           "--out", tmp_path / "out", "--no-plots", "--quiet"])
    assert rc == code, err
    assert time.monotonic() - t0 < 30 and not (tmp_path / "out").exists()
    count("hangs", "ray --address unreachable / ray:// without the client")


def test_cifar_label_names_that_are_not_names_are_one_line(tmp_path):
    """CIFAR `label_names` an integer (and other shapes) used to be a traceback."""
    import pickle

    import numpy as np

    from lightcl.data.datasets import load_dataset
    from lightcl.engine.errors import IntegrityError

    data = np.zeros((4, 3072), np.uint8)
    for i, names in enumerate([7, None, {b"a": 1}, [[b"a"]], [b"c0"] * 10, [b"\xff"] + [b"c%d" % k for k in range(9)],
                               [b""] * 10, [1, 2, 3], "abcdefghij", [b"x" * 1000] * 10]):
        d = tmp_path / f"n{i}" / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for b in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
            (d / b).write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2, 3]}, protocol=2))
        (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
        with pytest.raises(IntegrityError, match="label_names"):
            load_dataset("cifar10", "test", str(d))
        count("tracebacks", "CIFAR label_names malformed")
