"""Suite resume records are read like every other lightcl file (issue 21, items 2 and 4): regular files inside
OUT only, no FIFO, bounded, schema-checked; a bad record is run again, not trusted, and said so in one line.
The suite never writes outside OUT (a link planted at OUT/logs/<method>-seed0.log is not followed)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hostile_util import count, report_hostile_counts, watchdog  # noqa: F401


def ok_record(spec: dict, key: str) -> dict:
    """A finished run's record as run_one + on_done write it (the fields the report reads)."""
    return {"method": spec["method"], "seed": spec["seed"], "status": "ok", "run_key": key,
            "til": [[1.0], [0.5, 0.75]], "cil": [[1.0], [0.25, 0.5]], "cil_applicable": True,
            "final_til": 0.625, "final_cil": 0.5, "forgetting_til": 0.5, "forgetting_cil": 0.75, "bwt_til": -0.5,
            "bwt_cil": -0.75, "theoretical_mib": 1.5, "theoretical": {"weights": 10, "trainable": 10, "optimizer_slots": 0, "extra_state": 0,
                                                            "activations": 5, "samples_per_step": 32, "buffer": 0},
            "peak_rss_delta_mib": 3.0, "peak_rss_total_delta_mib": 4.0, "idle_rss_mib": 100.0,
            "peak_rss_mib": 103.0, "cuda_max_allocated_mib": None, "train_flops": 1e6, "steps": 4, "step_ms": 1.0,
            "step_ms_p90": 2.0, "step_ms_mean": 1.2, "train_s": 0.5, "wall_s": 1.0, "hyperparameters": {"lr": 0.1},
            "config": {}, "describe": {"trains": "all"}}


SPEC = {"method": "sgd", "seed": 0, "scenario": {"epochs": 1}, "hyperparameters": {"lr": 0.1}}


def _deep(n: int):
    v: object = 1
    for _ in range(n):
        v = {"a": v}
    return v


def _edits():
    """(name, edit of a valid record) -> each must be distrusted."""
    def set_(k, v):
        return lambda r: r.__setitem__(k, v)

    return {
        "til a string": set_("til", "abc"), "til empty": set_("til", []), "til ragged rows": set_("til", [[1.0, 1.0, 1.0]]),
        "til accuracy 2": set_("til", [[2.0]]), "til NaN": set_("til", [[float("nan")]]),
        "til row a dict": set_("til", [{"a": 1}]), "cil rows != til rows": set_("cil", [[1.0]]),
        "final_til a string": set_("final_til", "0.5"), "final_til missing": lambda r: r.pop("final_til"),
        "final_til infinite": set_("final_til", float("inf")), "step_ms a list": set_("step_ms", [1.0]),
        "wall_s a bool": set_("wall_s", True), "steps negative": set_("steps", -1), "steps a float": set_("steps", 1.5),
        "theoretical a list": set_("theoretical", [1]), "theoretical a string value": set_("theoretical", {"w": "x"}),
        "hyperparameters a list": set_("hyperparameters", [1]), "describe a string": set_("describe", "x"),
        "method of another": set_("method", "er"), "seed a bool": set_("seed", False),
        "nested 40 deep": set_("hyperparameters", _deep(40)), "nested 100000 deep": None,
        "not an object": None, "not JSON": None, "huge integer": None,
    }


def _write(path: Path, name: str, edit, spec, key):
    path.parent.mkdir(parents=True, exist_ok=True)
    if name == "nested 100000 deep":
        path.write_text('{"status": "ok", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif name == "not an object":
        path.write_text("[1, 2]")
    elif name == "not JSON":
        path.write_text("{not json")
    elif name == "huge integer":
        path.write_text('{"status": "ok", "steps": ' + "9" * 20_000 + "}")
    else:
        rec = ok_record(spec, key)
        edit(rec)
        path.write_text(json.dumps(rec))


def test_records_that_are_not_regular_files_inside_out_are_not_trusted(tmp_path):
    from lightcl.bench.suite import load_finished, record_path, run_key

    key = run_key(SPEC)
    out = tmp_path / "OUT"
    path = record_path(out, "sgd", 0)
    said: list[str] = []
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(ok_record(SPEC, key)))
    assert load_finished(out, SPEC, said.append)["final_cil"] == 0.5 and not said  # the control: trusted
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**ok_record(SPEC, key), "final_cil": 0.99}))
    cases = {}
    path.unlink()
    path.symlink_to(forged)
    cases["symlink to a forged record outside OUT"] = path
    out2 = tmp_path / "OUT2"
    out2.mkdir()
    (out2 / "records").symlink_to(forged.parent)
    os.replace(forged, forged.parent / "sgd-seed0.json")
    cases["OUT/records a link to elsewhere"] = out2
    out3 = tmp_path / "OUT3"
    record_path(out3, "sgd", 0).parent.mkdir(parents=True)
    os.mkfifo(record_path(out3, "sgd", 0))
    cases["a FIFO"] = out3
    out4 = tmp_path / "OUT4"
    record_path(out4, "sgd", 0).mkdir(parents=True)
    cases["a directory"] = out4
    out5 = tmp_path / "OUT5"
    record_path(out5, "sgd", 0).parent.mkdir(parents=True)
    record_path(out5, "sgd", 0).symlink_to(record_path(out5, "sgd", 0))
    cases["a symlink loop"] = out5
    with watchdog(20):
        for name, where in cases.items():
            said.clear()
            root = out if where == path else where
            assert load_finished(root, SPEC, said.append) is None, name
            assert len(said) == 1 and "not trusted" in said[0] and "again" in said[0], (name, said)
            count("hostile suite records", "not a regular file inside OUT")


def test_malformed_records_are_run_again_and_said_so(tmp_path):
    from lightcl.bench.suite import load_finished, record_path, run_key

    key = run_key(SPEC)
    with watchdog(30):
        for i, (name, edit) in enumerate(_edits().items()):
            out = tmp_path / f"o{i}"
            _write(record_path(out, "sgd", 0), name, edit, SPEC, key)
            said: list[str] = []
            assert load_finished(out, SPEC, said.append) is None, name
            assert len(said) == 1 and "\n" not in said[0], (name, said)
            count("hostile suite records", "malformed content")
    # bigger than the bound: refused before it is read
    out = tmp_path / "big"
    p = record_path(out, "sgd", 0)
    p.parent.mkdir(parents=True)
    with open(p, "wb") as f:
        f.truncate(17 << 20)
    said = []
    assert load_finished(out, SPEC, said.append) is None and "bytes" in said[0]
    count("hostile suite records", "malformed content")


def test_suite_never_writes_outside_out_and_reruns_a_bad_record(digits_ckpt, digits_export, tmp_path):
    """A real suite (sgd, smoke, 1 seed): a link planted at OUT/logs/sgd-seed0.log, and a forged record linked
    in from outside, are refused in one line before any run starts, their targets intact (re-running a record
    that is not trusted: the tests above, through the suite's own load_finished)."""
    from hostile_util import cli
    from test_suite import _seed_cache

    from lightcl.bench.suite import record_path

    _seed_cache(digits_ckpt, digits_export)
    out = tmp_path / "OUT"
    (out / "logs").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "logs" / "sgd-seed0.log").symlink_to(victim)
    # a forged, right-keyed-looking record outside OUT, linked in
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({"status": "ok", "final_cil": 0.99}))
    record_path(out, "sgd", 0).parent.mkdir(parents=True)
    record_path(out, "sgd", 0).symlink_to(forged)
    argv = ["bench", "--suite", "smoke", "--methods", "sgd", "--out", out, "--no-plots", "--quiet"]
    rc, _o, err = cli(argv)
    assert rc not in (0, None) and "symbolic link" in err, err
    assert victim.read_text() == "precious\n" and forged.read_text().endswith("0.99}")
    count("data loss", "suite: a link planted in OUT/logs")
    assert not (out / "results.json").exists() and record_path(out, "sgd", 0).is_symlink()

    count("hostile suite records", "a real suite with a forged linked record")


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_suite_out_at_a_file_or_under_one_is_one_line(tmp_path, where):
    from hostile_util import cli

    f = tmp_path / "f"
    f.write_text("x")
    out = f if where == "file" else f / "sub"
    rc, _o, err = cli(["bench", "--suite", "smoke", "--methods", "sgd", "--out", out, "--no-plots", "--quiet"])
    assert rc not in (0, None) and f.read_text() == "x"
    count("tracebacks", "suite --out at a file or under one")
