"""Your own data on the CLI: ``lightcl learn EXPORT --images DIR --lessons a,b/c,d`` (real subprocesses, a PNG
folder made from sklearn digits), class names in the state and in ``predict``'s output, the refusals, and one
stream loop for ``lightcl learn`` and the benchmark suite's worker."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

NAMES = ["zero", "one", "two", "three", "four"]


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lightcl", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """DIR/<name>/<i>.png: 60 digits of each of five classes, named zero..four (no train/test split: the learner
    holds out a seeded fraction)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("folder") / "digits"
    d = load_digits()
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for i in np.flatnonzero(d.target == c)[:60]:
            Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32)).save(root / name / f"{i}.png")
    return root


def _state_digest(d: Path) -> str:
    return hashlib.sha256(b"".join((d / n).read_bytes() for n in ("state.json", "head.safetensors",
                                                                   "learner.safetensors"))).hexdigest()


def test_folder_lessons_names_resume_and_predict(digits_export, digit_folder, tmp_path):
    state, out = tmp_path / "s", tmp_path / "r.json"
    r = _cli("learn", digits_export, "--images", digit_folder, "--lessons", "zero,one/two,three", "--state", state,
             "--epochs", "2", "--backend", "ort", "--quiet", "--json", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["classes"] == ["zero", "one", "two", "three"] and res["tasks_done"] == 2
    assert res["lessons"]["lessons"] == [["zero", "one"], ["two", "three"]]
    assert len(res["til"]) == 2 and res["final_til"] > 0.8, res["til"]
    doc = json.loads((state / "state.json").read_text())
    assert doc["class_map"]["names"] == ["zero", "one", "two", "three"]

    # the same command again: the state is refused, never overwritten
    before = _state_digest(state)
    r = _cli("learn", digits_export, "--images", digit_folder, "--lessons", "zero,one/two,three", "--state", state,
             "--quiet")
    assert r.returncode == 1 and "--resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _state_digest(state) == before

    # a later lesson: zero comes back beside a new class; its column is kept
    r = _cli("learn", digits_export, "--images", digit_folder, "--lessons", "zero,one/two,three/zero,four",
             "--state", state, "--resume", "--backend", "ort", "--quiet", "--json", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["classes"] == ["zero", "one", "two", "three", "four"] and res["tasks_done"] == 3
    assert len(res["til"][-1]) == 3

    # resuming with other lessons than the state's is refused
    r = _cli("learn", digits_export, "--images", digit_folder, "--lessons", "one,zero", "--state", state, "--resume",
             "--quiet")
    assert r.returncode == 1 and "must begin with" in r.stderr, r.stderr

    # predict prints names; its JSON carries names and indices
    pj = tmp_path / "p.json"
    r = _cli("predict", state, "--images", digit_folder / "four", "--json", pj)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert all(line.split("\t")[-1] in NAMES for line in lines if "\t" in line)
    pred = json.loads(pj.read_text())
    assert pred["classes"] == NAMES
    assert all(p["label"] in NAMES and NAMES.index(p["label"]) == p["index"] for p in pred["predictions"])
    assert np.mean([p["label"] == "four" for p in pred["predictions"]]) > 0.5
    # --dataset folder: labels matched by name, accuracy on the learned classes
    r = _cli("predict", state, "--dataset", "folder", "--data-path", digit_folder, "--json", pj)
    assert r.returncode == 0, r.stderr
    assert json.loads(pj.read_text())["accuracy"] > 0.5


@pytest.mark.parametrize("args, needle", [
    (["--data-path", "/nonexistent"], "--scenario"),  # never a silent smoke run
    (["--images", "{folder}", "--lessons", "zero,lamp"], "lamp"),
    (["--images", "{folder}"], "--lessons"),
    (["--lessons", "zero,one"], "--images"),
    (["--images", "{folder}", "--lessons", "zero,one", "--scenario", "smoke"], "--scenario"),
    (["--images", "{folder}", "--lessons", "zero,,one"], "--lessons"),
    (["--images", "{folder}", "--lessons", "zero,zero"], "twice"),
    (["--images", "{folder}", "--lessons", "zero,one", "--replay-codec", "pq"], "--replay-budget"),
    (["--images", "{folder}", "--lessons", "zero,one", "--replay-budget", "lots"], "replay_budget"),
    (["--images", "{folder}", "--lessons", "zero,one", "--replay-budget", "1MiB", "--replay-batch", "0"],
     "replay_batch"),
    (["--images", "{folder}", "--lessons", "zero,one", "--replay-budget", "1MiB", "--replay-batch", "1000000000"],
     "replay_batch"),
    (["--images", "{folder}", "--lessons", "zero,one", "--replay-budget", "1MiB", "--replay-weight", "nan"],
     "replay_weight"),
    (["--images", "{folder}", "--lessons", "zero,one", "--replay-budget", "1MiB", "--replay-steps", "-1"],
     "replay_steps"),
    (["--images", "{folder}", "--lessons", "zero,one", "--replay-budget", "1MiB", "--replay-steps", "100000"],
     "replay_steps"),
    (["--images", "{folder}", "--lessons", "zero,one", "--replay-steps", "3"], "--replay-budget"),
])
def test_refusals_are_one_line(digits_export, digit_folder, tmp_path, args, needle):
    state = tmp_path / "s"
    args = [str(a).replace("{folder}", str(digit_folder)) for a in args]
    r = _cli("learn", digits_export, "--state", state, "--quiet", *args)
    assert r.returncode == 1 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not state.exists()


def test_learn_and_the_suite_worker_run_the_same_loop(digits_ckpt, digits_export, tmp_path, monkeypatch):
    """One code path: ``lightcl learn`` (learn_scenario) and the suite's worker (run_one) both go through
    lightcl.data.stream.run_stream; and the learn verb imports nothing from the benchmark."""
    from dataclasses import replace

    import lightcl.data.stream as stream
    from lightcl.bench.scenarios import get_scenario
    from lightcl.bench.suite import _frozen_figures, load_config, run_one

    calls = []
    real = stream.run_stream

    def spy(lessons, agent, epochs):
        calls.append(type(agent).__name__)
        return real(lessons, agent, epochs)

    monkeypatch.setattr(stream, "run_stream", spy)
    s = replace(get_scenario("smoke", epochs=1), n_tasks=1)
    stream.learn_scenario(digits_export, s, tmp_path / "s", backend="ort", progress=False, echo=lambda _: None)
    spec = {"method": "lightcl", "seed": 0, "scenario": s.to_dict(), "ckpt": str(digits_ckpt),
            "export_dir": str(digits_export), "hyperparameters": load_config("lightcl", "smoke")["hyperparameters"],
            "threads": 1, "frozen": _frozen_figures(str(digits_ckpt), "layer3", (3, 32, 32))}
    rec = run_one(spec)
    assert calls == ["LearnerAgent", "MethodAgent"] and len(rec["til"]) == 1
    # the verb itself, run to the end in a fresh process: no lightcl.bench module is ever loaded
    code = ("import sys; from lightcl.cli import main; "
            f"rc = main(['learn', {str(digits_export)!r}, '--state', {str(tmp_path / 'v')!r}, '--epochs', '1', "
            "'--max-tasks', '1', '--backend', 'ort', '--quiet']); "
            "print('BENCH', sorted(k for k in sys.modules if k.startswith('lightcl.bench')), rc)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "BENCH [] 0" in r.stdout, (r.stdout, r.stderr)


def test_learn_with_a_replay_memory_keeps_its_budget_and_saves_it(digits_export, digit_folder, tmp_path):
    """The product verb turns the engine's feature replay on: PQ codes under a byte budget, one CE over every
    seen class; the memory is in the state and in the result's memory report, and a resume keeps it."""
    state, out = tmp_path / "s", tmp_path / "r.json"
    budget = 64 * 1024
    r = _cli("learn", digits_export, "--images", digit_folder, "--lessons", "zero,one/two,three", "--state", state,
             "--epochs", "2", "--backend", "ort", "--quiet", "--json", out, "--replay-budget", "64KiB",
             "--replay-codec", "pq", "--loss-slice", "all", "--replay-batch", "16")
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["options"]["replay_budget"] == "64KiB" and res["options"]["replay_codec"] == "pq"
    assert 0 < res["memory"]["replay_bytes"] <= budget
    doc = json.loads((state / "state.json").read_text())
    assert "replay" in json.dumps(doc)
    r = _cli("learn", digits_export, "--images", digit_folder, "--lessons", "zero,one/two,three/four",
             "--state", state, "--resume", "--backend", "ort", "--quiet", "--json", out, "--replay-budget", "4MiB")
    assert r.returncode == 0, r.stderr
    assert "ignored: --replay-budget" in r.stderr  # the state's budget stays; the flag is not silently dropped
    res = json.loads(out.read_text())
    assert res["tasks_done"] == 3 and 0 < res["memory"]["replay_bytes"] <= budget
    assert res["options"]["replay_budget"] == "64KiB"
