"""`lightcl export --add-plan` and the artefact registry's "add to a finished export" path.

TensorRT cannot be installed here, so a real plan is never built (export/tensorrt_build.py says so): the real
CLI runs in a subprocess for what can run (TensorRT missing -> exit 3, one line; a symbolic link, a FIFO, a
file, a directory that is not an export -> one line, exit 1, nothing changed), and the swap itself
(copy, verify, build, meta.json, carry the user's files) runs with a real registered kind that writes a file.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lightcl.engine.errors import InputError, StateError
from lightcl.engine.export_dir import load_export_meta
from lightcl.export import artefacts

pytest.importorskip("onnxruntime")


def _snapshot(d: Path) -> dict:
    return {p.name: (os.lstat(p).st_mode, os.lstat(p).st_mtime_ns, os.lstat(p).st_size) for p in sorted(d.iterdir())}


def _lightcl(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightcl", "export", *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _one_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_add_plan_without_tensorrt_exits_3_with_one_line_and_changes_nothing(digits_export):
    before = _snapshot(digits_export)
    r = _lightcl("--add-plan", str(digits_export), "--fp16")
    assert r.returncode == 3, r.stderr
    assert "tensorrt" in _one_line(r).lower()
    assert _snapshot(digits_export) == before
    assert not [p for p in digits_export.parent.iterdir() if p.name.startswith(f".{digits_export.name}.")]


def test_add_plan_refuses_a_link_a_fifo_a_file_and_a_foreign_directory(digits_export, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(digits_export)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    before = _snapshot(digits_export)
    for target, says in ((link, "symbolic link"), (fifo, "FIFO"), (foreign, "not a lightcl export")):
        r = _lightcl("--add-plan", str(target), timeout=60)  # a FIFO must never be opened: no hang
        assert r.returncode == 1, (target, r.stderr)
        assert says in _one_line(r), r.stderr
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert (foreign / "precious.txt").read_text() == "keep me" and [p.name for p in foreign.iterdir()] == ["precious.txt"]
    assert _snapshot(digits_export) == before


def test_add_plan_usage_errors_in_process(digits_export, digits_ckpt, tmp_path):
    from hostile_util import cli, watchdog

    a_file = tmp_path / "file"
    a_file.write_text("x")
    fifo_meta = tmp_path / "fifo_meta"
    fifo_meta.mkdir()
    os.mkfifo(fifo_meta / "meta.json")
    cases = [(["--add-plan", tmp_path / "missing"], 1, "not found"),
             (["--add-plan", a_file], 1, "not an export directory"),
             (["--add-plan", fifo_meta], 1, "FIFO"),
             (["--add-plan", digits_export, "--fp16", "--int8"], 2, "give one"),
             ([digits_ckpt, "--add-plan", digits_export], 2, "SOURCE"),
             (["--add-plan", digits_export, "--out", tmp_path / "o", "--split", "layer2"], 2, "--out, --split"),
             ([digits_ckpt], 2, "--out DIR is needed")]
    before = _snapshot(digits_export)
    for argv, code, says in cases:
        with watchdog(60):  # a FIFO meta.json must be refused, never opened for reading
            rc, _out, err = cli(["export", *argv])
        assert rc == code and says in err, (argv, rc, err)
    assert a_file.read_text() == "x" and not (tmp_path / "o").exists()
    assert stat.S_ISFIFO(os.lstat(fifo_meta / "meta.json").st_mode)
    assert _snapshot(digits_export) == before


@pytest.fixture
def stamp_kind(monkeypatch):
    """A real "later" kind registered for the test: writes ``stamp.txt`` (or, with ``spoil``, rewrites
    frozen.onnx, which a later kind must never do)."""
    monkeypatch.setattr(artefacts, "_KINDS", dict(artefacts.kinds()))

    @artefacts.register_artefact("stamp", order=99, files="stamp.txt", needs=("onnx",), later=True)
    def build(b: artefacts.Build, opts: dict) -> None:
        if opts.get("spoil"):
            (b.dir / "frozen.onnx").write_bytes(b"spoiled")
        (b.dir / "stamp.txt").write_text(opts["text"])
        b.meta["stamp"] = {"text": opts["text"]}

    return "stamp"


def test_add_artefact_swaps_atomically_keeps_user_files_and_the_frozen_id(digits_export, tmp_path, stamp_kind):
    exp = tmp_path / "exp"
    shutil.copytree(digits_export, exp)
    (exp / "NOTES.md").write_text("my notes")  # not lightcl's: carried over, never deleted
    old = load_export_meta(exp)
    meta = artefacts.add_artefact(exp, stamp_kind, {"text": "one"})
    assert meta["frozen_id"] == old["frozen_id"] and meta["stamp"] == {"text": "one"}
    assert (exp / "NOTES.md").read_text() == "my notes" and (exp / "stamp.txt").read_text() == "one"
    on_disk = load_export_meta(exp, verify=True)  # every file, the new one included, matches meta.json
    assert on_disk == json.loads(json.dumps(meta)) and "stamp.txt" in on_disk["files"]
    assert "NOTES.md" not in on_disk["files"]
    assert stat.S_IMODE(os.stat(exp).st_mode) & 0o055 == 0o055 & ~_umask()  # readable, like a fresh export
    # again: the artefact is replaced, the user's file still kept
    artefacts.add_artefact(exp, stamp_kind, {"text": "two"})
    assert (exp / "stamp.txt").read_text() == "two" and (exp / "NOTES.md").read_text() == "my notes"
    # a kind that touches the frozen part is refused and the export is left as it was
    before = {p.name: p.read_bytes() for p in exp.iterdir()}
    with pytest.raises(StateError, match="changed the frozen part"):
        artefacts.add_artefact(exp, stamp_kind, {"text": "three", "spoil": True})
    assert {p.name: p.read_bytes() for p in exp.iterdir()} == before
    # only "later" kinds can be added: int8 would change the frozen_id
    with pytest.raises(InputError, match="frozen_id"):
        artefacts.add_artefact(exp, "int8", artefacts.Int8Options())
    # a damaged file is found before anything is copied
    (exp / "head.safetensors").write_bytes(b"x")
    with pytest.raises(StateError, match="head.safetensors"):
        artefacts.add_artefact(exp, stamp_kind, {"text": "four"})
    assert (exp / "stamp.txt").read_text() == "two"


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_registry_orders_and_checks_kinds():
    ks = artefacts.kinds()
    assert [k for k in sorted(ks, key=lambda n: ks[n].order)][:4] == ["onnx", "int8", "trt82", "tensorrt"]
    assert [k.name for k in artefacts.preflight({"int8": None, "onnx": None})] == ["onnx", "int8"]
    with pytest.raises(InputError, match="needs onnx"):
        artefacts.preflight({"int8": None})
    with pytest.raises(InputError, match="unknown artefact kind 'plan'; known: int8, onnx"):
        artefacts.artefact("plan")
    opts = artefacts.ExportOptions.from_kwargs(profile="jetson-nano", int8=True, tensorrt=True)
    assert list(opts.kinds()) == ["onnx", "int8", "trt82", "tensorrt"] and opts.tensorrt.precision == "int8"
    with pytest.raises(TypeError):
        artefacts.ExportOptions.from_kwargs(int9=True)


def test_export_options_object_gives_the_same_export_as_the_keywords(digits_ckpt, digits_export, tmp_path):
    """conftest's digits_export is ``export_checkpoint(ckpt, out, split="layer3", progress=False)``: the same
    export through an ExportOptions object writes the same frozen part (the ONNX and its parity figures)."""
    from lightcl.export.onnx_export import export_checkpoint

    opts = artefacts.ExportOptions(progress=False)
    meta = export_checkpoint(digits_ckpt, tmp_path / "exp", split="layer3", options=opts)
    ref = load_export_meta(digits_export)
    assert meta["files"]["frozen.onnx"] == ref["files"]["frozen.onnx"]
    assert meta["parity"] == ref["parity"] and sorted(meta["files"]) == sorted(ref["files"])
    assert opts == artefacts.ExportOptions(progress=False)  # the caller's object is not changed
    with pytest.raises(TypeError, match="not both"):
        export_checkpoint(digits_ckpt, tmp_path / "x", options=opts, int8=True)
    assert not (tmp_path / "x").exists()
