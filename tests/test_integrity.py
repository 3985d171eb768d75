"""Integrity and safe loading of learner states and export directories, with real files and sessions.

- every file of a state / export is checked against the sha256 its JSON records; truncated, bit-flipped,
  swapped (a valid file of another state / export) and deleted files are refused, naming the file;
- ``state.json`` checks itself (``self_sha256``), so a flipped digit in a value is refused too;
- names inside metadata cannot escape the directory (``../x``, absolute paths, symlinks out);
- a frozen.onnx that does not match meta.json is refused before an onnxruntime session exists;
- nothing on the load path unpickles (pickle / torch.load are made to raise while loading).
"""
from __future__ import annotations

import ast
import collections
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from lightcl.engine.errors import IntegrityError, LightCLError, StateError
from lightcl.engine.export_dir import frozen_id_of, load_export_meta, load_head
from lightcl.engine.extractors import load_extractor
from lightcl.engine.head import Head
from lightcl.engine.learner import LightCL
from lightcl.engine.state import read_state_doc
from conftest import write_counts

COUNTS: collections.Counter = collections.Counter()
ENGINE = Path(__file__).resolve().parents[1] / "engine"


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts("integrity", COUNTS)
    if COUNTS:
        print("\nintegrity:", dict(sorted(COUNTS.items())))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ---------------------------------------------------------------- corruptions
def truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def truncate_to_zero(p: Path) -> None:
    p.write_bytes(b"")


def drop_last_byte(p: Path) -> None:
    p.write_bytes(p.read_bytes().rstrip()[:-1])  # the last byte that is content (state.json ends in a newline)


def flip(where: str):
    def f(p: Path) -> None:
        data = bytearray(p.read_bytes())
        i = {"start": 3, "middle": len(data) // 2, "end": len(data) - 2}[where]
        data[i] ^= 0x02
        p.write_bytes(bytes(data))

    f.__name__ = f"bitflip_{where}"
    return f


CORRUPTIONS = [truncate, truncate_to_zero, drop_last_byte, flip("start"), flip("middle"), flip("end")]


def _kind(fn) -> str:
    return "bit-flipped" if fn.__name__.startswith("bitflip") else "truncated"


# ---------------------------------------------------------------- learner states
def _learner(export: Path, seed: int, classes=(0, 1, 2, 3)) -> LightCL:
    ext = load_extractor(export, backend="ort", threads=1)
    lr = LightCL(ext, load_head(export), num_classes=None, momentum=0.9, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for t in range(2):
        cs = list(classes[2 * t: 2 * t + 2])
        lr.begin_task(t, cs)
        for _ in range(2):
            lr.observe(torch.randn(8, 3, 32, 32, generator=g), torch.tensor(cs * 4))
        lr.end_task()
    return lr


@pytest.fixture(scope="module")
def states(digits_export, tmp_path_factory):
    root = tmp_path_factory.mktemp("states")
    a, b = _learner(digits_export, 0), _learner(digits_export, 1)
    a.save(root / "A")
    b.save(root / "B")
    return root / "A", root / "B", a.extractor


def _expect_refused(load, name: str, kind: str, exc=IntegrityError) -> None:
    with pytest.raises(exc) as e:
        load()
    assert name in str(e.value), f"{kind} {name}: message does not name the file: {e.value}"
    COUNTS["loads refused"] += 1


@pytest.mark.parametrize("name", ["head.safetensors", "learner.safetensors", "state.json"])
def test_corrupted_state_files_are_refused_naming_the_file(states, tmp_path, name):
    a, b, ext = states
    good = LightCL.load(a, ext)
    for fn in CORRUPTIONS:
        d = tmp_path / fn.__name__
        shutil.copytree(a, d)
        fn(d / name)
        COUNTS[f"state files {_kind(fn)}"] += 1
        _expect_refused(lambda: LightCL.load(d, ext), name, f"state files {_kind(fn)}")
        _expect_refused(lambda: read_state_doc(d), name, f"state files {_kind(fn)}")
    # swapped: a valid file of another state
    d = tmp_path / "swapped"
    shutil.copytree(a, d)
    shutil.copy(b / name, d / name)
    COUNTS["state files swapped"] += 1
    _expect_refused(lambda: LightCL.load(d, ext), name, "state files swapped")
    # deleted
    d = tmp_path / "deleted"
    shutil.copytree(a, d)
    (d / name).unlink()
    COUNTS["state files deleted"] += 1
    _expect_refused(lambda: LightCL.load(d, ext), name, "state files deleted", exc=StateError)
    # the original is untouched and still loads to the same model
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(LightCL.load(a, ext).logits(x), good.logits(x))


def test_state_json_value_edit_is_refused(states, tmp_path):
    """A flipped digit that keeps state.json valid JSON (lr 0.01 -> 0.03) is caught by its self checksum."""
    a, _, ext = states
    d = tmp_path / "s"
    shutil.copytree(a, d)
    text = (d / "state.json").read_text()
    assert '"lr": 0.01' in text
    (d / "state.json").write_text(text.replace('"lr": 0.01', '"lr": 0.03'))
    COUNTS["state files bit-flipped"] += 1
    _expect_refused(lambda: LightCL.load(d, ext), "state.json", "state files bit-flipped")


def test_state_file_list_cannot_name_other_paths(states, tmp_path):
    """A crafted state.json (valid self checksum) naming ../x or an absolute path is refused."""
    from lightcl.engine.state import _doc_digest

    a, _, ext = states
    (tmp_path / "outside.bin").write_bytes(b"secret")
    for extra in ("../outside.bin", str(tmp_path / "outside.bin")):
        d = tmp_path / f"s{COUNTS['metadata path escapes']}"
        shutil.copytree(a, d)
        doc = json.loads((d / "state.json").read_text())
        doc["files"][extra] = _sha(tmp_path / "outside.bin")
        doc["self_sha256"] = _doc_digest(doc)
        (d / "state.json").write_text(json.dumps(doc))
        with pytest.raises(IntegrityError, match="file list"):
            LightCL.load(d, ext)
        COUNTS["metadata path escapes"] += 1
        COUNTS["loads refused"] += 1


def test_state_of_another_frozen_part_is_refused(states, foreign_export):
    a, _, _ = states
    other = load_extractor(foreign_export, backend="ort", threads=1)
    with pytest.raises(IntegrityError, match="frozen part"):
        LightCL.load(a, other)
    COUNTS["state loaded against a foreign export"] += 1


def test_foreign_directories_are_refused(states, digits_export, tmp_path):
    a, _, ext = states
    for d, exc in ((digits_export, StateError), (tmp_path / "missing", StateError), (a / "state.json", StateError)):
        with pytest.raises(exc):
            LightCL.load(d, ext)
        COUNTS["state: missing or foreign directory"] += 1


# ---------------------------------------------------------------- exports
def _perturbed_onnx(src: Path, dst: Path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    init = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)) if t.dims else 0)
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(m, str(dst))


def _perturbed_safetensors(src: Path, dst: Path, meta_update: dict | None = None) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    k = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[k] = tensors[k].clone()
    tensors[k].view(-1)[0] += 0.5
    meta.update(meta_update or {})
    save_file(tensors, str(dst), metadata=meta)


@pytest.fixture(scope="module")
def foreign_export(digits_export, tmp_path_factory):
    """A second valid export: every file differs from the digits export's (another frozen part)."""
    d = tmp_path_factory.mktemp("foreign") / "export"
    shutil.copytree(digits_export, d)
    _perturbed_onnx(digits_export / "frozen.onnx", d / "frozen.onnx")
    fid = _sha(d / "frozen.onnx")
    _perturbed_safetensors(digits_export / "frozen.safetensors", d / "frozen.safetensors", {"onnx_sha256": fid})
    _perturbed_safetensors(digits_export / "head.safetensors", d / "head.safetensors")
    meta = json.loads((d / "meta.json").read_text())
    for name in meta["files"]:
        meta["files"][name] = _sha(d / name)
    meta["frozen_id"] = frozen_id_of(meta["files"])
    (d / "meta.json").write_text(json.dumps(meta, indent=2))
    for backend in ("ort", "torch"):  # valid on its own
        assert load_extractor(d, backend=backend).frozen_id == meta["frozen_id"]
    load_head(d)
    return d


@pytest.fixture()
def no_session(monkeypatch):
    """onnxruntime.InferenceSession fails the test if anything tries to create one."""
    import onnxruntime

    def boom(*a, **k):
        pytest.fail("an onnxruntime session was created for an export that does not match its meta.json")

    monkeypatch.setattr(onnxruntime, "InferenceSession", boom)


def _export_loaders(d: Path):
    return {
        "load_extractor(ort)": lambda: load_extractor(d, backend="ort"),
        "load_extractor(torch)": lambda: load_extractor(d, backend="torch"),
        "load_extractor(auto)": lambda: load_extractor(d),
        "load_export_meta": lambda: load_export_meta(d),
    }


def test_sessions_are_really_created_through_the_patched_name(digits_export, monkeypatch):
    """Control for ``no_session``: a good export does go through onnxruntime.InferenceSession."""
    import onnxruntime

    calls = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: calls.append(1) or real(*a, **k))
    load_extractor(digits_export, backend="ort")
    assert calls == [1]


@pytest.mark.parametrize("name", ["frozen.onnx", "frozen.safetensors", "head.safetensors"])
def test_corrupted_export_files_are_refused_before_any_session(digits_export, foreign_export, tmp_path, no_session,
                                                               name):
    for fn in [*CORRUPTIONS, "swapped"]:
        d = tmp_path / (fn if isinstance(fn, str) else fn.__name__)
        shutil.copytree(digits_export, d)
        if fn == "swapped":
            shutil.copy(foreign_export / name, d / name)
            kind = "export files swapped"
        else:
            fn(d / name)
            kind = f"export files {_kind(fn)}"
        COUNTS[kind] += 1
        for what, load in _export_loaders(d).items():
            _expect_refused(load, name, kind)
        if name == "head.safetensors":
            _expect_refused(lambda: load_head(d), name, kind)
    d = tmp_path / "deleted"
    shutil.copytree(digits_export, d)
    (d / name).unlink()
    COUNTS["export files deleted"] += 1
    _expect_refused(lambda: load_extractor(d, backend="ort"), name, "export files deleted", exc=StateError)


def test_meta_json_damage_is_refused(digits_export, tmp_path, no_session):
    cases = {
        "truncated": lambda t: t[: len(t) // 2],
        "empty": lambda t: "",
        "not an object": lambda t: "[1, 2]",
        "frozen_id edited": lambda t: t.replace(json.loads(t)["frozen_id"], "0" * 64),
        "checksum edited": lambda t: t.replace(json.loads(t)["files"]["head.safetensors"], "f" * 64),
        "format edited": lambda t: t.replace("lightcl-export/2", "lightcl-export/9"),
        "old format (frozen_id without frozen.safetensors)": lambda t: t.replace("lightcl-export/2", "lightcl-export/1"),
    }
    for label, edit in cases.items():
        d = tmp_path / label.replace(" ", "_")
        shutil.copytree(digits_export, d)
        (d / "meta.json").write_text(edit((d / "meta.json").read_text()))
        with pytest.raises(LightCLError) as e:
            load_extractor(d, backend="ort")
        assert isinstance(e.value, (IntegrityError, StateError)), label
        assert any(n in str(e.value) for n in ("meta.json", "frozen.onnx", "head.safetensors")), (label, str(e.value))
        COUNTS["export meta.json damaged"] += 1
        COUNTS["loads refused"] += 1


def test_metadata_names_cannot_escape_the_export(digits_export, tmp_path, no_session):
    outside = tmp_path / "outside.onnx"
    shutil.copy(digits_export / "frozen.onnx", outside)
    sha = _sha(outside)
    for label, name in [("parent", "../outside.onnx"), ("absolute", str(outside)),
                        ("nested", "sub/../../outside.onnx"), ("symlink", "link.onnx")]:
        d = tmp_path / label
        shutil.copytree(digits_export, d)
        if label == "symlink":
            os.symlink(outside, d / "link.onnx")
        meta = json.loads((d / "meta.json").read_text())
        meta["files"][name] = sha
        (d / "meta.json").write_text(json.dumps(meta))
        COUNTS["metadata path escapes"] += 1
        for what, load in _export_loaders(d).items():
            with pytest.raises(IntegrityError, match="refusing file name"):
                load()
            COUNTS["loads refused"] += 1
    # a symlink standing in for a listed file is refused as well
    d = tmp_path / "symlinked-frozen"
    shutil.copytree(digits_export, d)
    (d / "frozen.onnx").unlink()
    os.symlink(outside, d / "frozen.onnx")
    with pytest.raises(IntegrityError, match="refusing file name"):
        load_extractor(d, backend="ort")
    COUNTS["metadata path escapes"] += 1


def test_head_load_refuses_foreign_files(digits_export, tmp_path):
    cases = {"frozen.onnx": digits_export / "frozen.onnx", "frozen.safetensors": digits_export / "frozen.safetensors",
             "meta.json": digits_export / "meta.json"}
    for label, p in cases.items():
        with pytest.raises(IntegrityError):
            Head.load(p)
        COUNTS["Head.load: foreign file"] += 1
    # a head whose config metadata is malformed
    from safetensors.torch import save_file

    head = Head.load(digits_export / "head.safetensors")
    tensors = {k: v.contiguous() for k, v in head.state_dict().items()}
    for label, cfg in [("bad json", "{"), ("missing keys", "{}"), ("wrong shapes", json.dumps({**head.config, "feat_dim": 7}))]:
        p = tmp_path / f"{label.replace(' ', '_')}.safetensors"
        save_file(tensors, str(p), metadata={"format": "lightcl-head/1", "config": cfg})
        with pytest.raises(IntegrityError):
            Head.load(p)
        COUNTS["Head.load: foreign file"] += 1
    with pytest.raises(StateError):
        Head.load(tmp_path / "missing.safetensors")
    COUNTS["Head.load: missing file"] += 1


# ---------------------------------------------------------------- no pickle on the load path
def test_no_pickle_on_the_load_path(states, digits_export, monkeypatch):
    a, _, _ = states

    def boom(*a, **k):
        raise AssertionError("unpickling on the load path")

    import numpy

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(torch.serialization, "load", boom)
    monkeypatch.setattr(numpy, "load", boom)
    x = torch.randn(3, 3, 32, 32)
    for backend in ("ort", "torch", "auto"):
        ext = load_extractor(digits_export, backend=backend)
        lr = LightCL.load(a, ext)
        assert lr.predict(x).shape == (3,)
    Head.load(digits_export / "head.safetensors")
    load_head(digits_export)
    read_state_doc(a)


def test_engine_source_never_unpickles():
    """Static check over engine/: no pickle import, no torch.load, no numpy allow_pickle=True."""
    offenders = []
    for f in sorted(ENGINE.rglob("*.py")):
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(m and m.split(".")[0] in ("pickle", "_pickle", "dill", "cloudpickle", "joblib") for m in mods):
                    offenders.append(f"{f.name}:{node.lineno} imports pickle")
            if isinstance(node, ast.Attribute) and node.attr == "load" and isinstance(node.value, ast.Name) \
                    and node.value.id in ("torch", "pickle"):
                offenders.append(f"{f.name}:{node.lineno} {node.value.id}.load")
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and \
                    not (isinstance(node.value, ast.Constant) and node.value.value is False):
                offenders.append(f"{f.name}:{node.lineno} allow_pickle")
    assert not offenders, offenders
