"""Issue 9, part B (files): data loss, availability, integrity and hangs, each reproduced for real.

Real SIGKILL/SIGTERM of a writer process between the two renames of a save; real FIFOs in place of
every file lightcl reads (a watchdog turns a hang into a failure); real symlinks, directories and
symlink loops; a real ONNX model converted to external data. Every refusal must be a LightCLError
(one CLI line) and leave the previous files byte-identical.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hostile_util import report_hostile_counts  # noqa: F401  (autouse: writes the case counts)
from hostile_util import (COUNTS, cli, count, images, make_state, resign_export, resign_state, sha, tree_bytes,
                          watchdog)

from lightcl.engine.errors import InputError, IntegrityError, LightCLError, StateError
from lightcl.engine.export_dir import load_export_meta, load_head
from lightcl.engine.extractors import load_extractor
from lightcl.engine.fileio import SWAP_MARKER, atomic_directory, recover_directory
from lightcl.engine.learner import LightCL
from lightcl.engine.state import check_state_path, read_state_doc

REPO = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def base_state(digits_export, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile") / "state"
    make_state(digits_export, d)
    return d


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _litter(d: Path) -> list[str]:
    return sorted(p.name for p in d.parent.iterdir() if p.name.startswith(f".{d.name}."))


# ---------------------------------------------------------------- data loss (a): kill between the two renames
_KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL
    state, export, sig = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lr = LightCL.load(state, load_extractor(export, backend="torch"))
    lr.counters["steps"] += 1000
    real = os.rename
    def rename(src, dst, *a, **k):
        real(src, dst, *a, **k)
        if os.path.abspath(src) == os.path.abspath(state):  # dest -> .old-*: the instant between the renames
            os.kill(os.getpid(), sig)
            signal.pause()
    os.rename = rename
    lr.save(state)
""")


def _kill_between_renames(state: Path, export: Path, sig: int) -> None:
    r = subprocess.run([sys.executable, "-c", _KILLER.format(tests=str(REPO / "tests")), str(state), str(export),
                        str(int(sig))], capture_output=True, text=True, timeout=120)
    assert r.returncode == -sig, (r.returncode, r.stderr[-2000:])
    assert not state.exists() and any(".old-" in n for n in _litter(state)), _litter(state)


def test_resume_after_sigkill_between_renames_keeps_the_state(digits_export, tmp_path):
    """`learn --resume` used to find "no state", restart at task 0 and overwrite the recovered state."""
    state = tmp_path / "state"
    common = [digits_export, "--scenario", "smoke", "--state", state, "--epochs", "1", "--batch-size", "128",
              "--backend", "torch", "--quiet", "--max-tasks", "1"]
    rc, out, err = cli(["learn", *common])
    assert rc == 0, err
    (state / "notes.txt").write_text("mine")  # a user's file beside the state
    before = read_state_doc(state)
    _kill_between_renames(state, digits_export, signal.SIGKILL)
    rc, out, err = cli(["learn", *common, "--resume"])
    assert rc == 0, err
    assert "resuming" in out and "1 of 5 tasks done" in out, out
    doc = read_state_doc(state)
    assert doc["finished_tasks"] == [0, 1] and doc["metrics"]["til"][0] == before["metrics"]["til"][0]
    assert (state / "notes.txt").read_text() == "mine"
    assert _litter(state) == [] and not (state / SWAP_MARKER).exists()
    count("data loss", "kill between renames, then learn --resume (SIGKILL)")


def test_sigterm_between_renames_every_reader_and_writer_recovers(base_state, digits_export, tmp_path):
    ext = load_extractor(digits_export, backend="torch")
    entries = {
        "reader: read_state_doc": lambda d: read_state_doc(d),
        "reader: LightCL.load": lambda d: LightCL.load(d, ext),
        "writer: check_state_path": lambda d: check_state_path(d),
        "reader: lightcl predict": lambda d: cli(["predict", d, "--dataset", "digits", "--backend", "torch"]),
    }
    killed = {}
    for sig in (signal.SIGKILL, signal.SIGTERM):  # one real kill per signal; each reader gets a copy of the wreck
        d = _copy(base_state, tmp_path / sig.name / "state")
        want = sha(d / "state.json")
        _kill_between_renames(d, digits_export, sig)
        killed[sig] = d.parent
    for i, (what, call) in enumerate(entries.items()):
        sig = (signal.SIGKILL, signal.SIGTERM)[i % 2]
        root = shutil.copytree(killed[sig], tmp_path / f"r{i}", symlinks=True)
        d = root / "state"
        call(d)
        assert sha(d / "state.json") == want and _litter(d) == [], what
        count("data loss", f"kill between renames ({sig.name}), then {what.split(':')[0]}")


# ---------------------------------------------------------------- data loss (b), (c): other files, --json
def test_save_keeps_files_it_did_not_write(base_state, digits_export, tmp_path):
    d = _copy(base_state, tmp_path / "state")
    (d / "results.json").write_text('{"mine": 1}')
    (d / "notes").mkdir()
    (d / "notes" / "a.txt").write_text("deep")
    os.symlink("results.json", d / "link")
    mine = {k: v for k, v in tree_bytes(d).items() if k in ("results.json", "notes", "notes/a.txt", "link")}
    lr = LightCL.load(d, load_extractor(digits_export, backend="torch"))
    lr.counters["steps"] += 1
    lr.save(d)
    lr.save(d)
    assert {k: v for k, v in tree_bytes(d).items() if k in mine} == mine
    assert LightCL.load(d, lr.extractor).counters["steps"] == lr.counters["steps"]
    count("data loss", "user files/dirs/links kept across saves (state)")
    # an export directory: meta.json's files are lightcl's, anything else is kept
    e = _copy(digits_export, tmp_path / "export")
    (e / "README.txt").write_text("my notes")
    from lightcl.engine.export_dir import owned_names

    with atomic_directory(e, owned=owned_names) as tmp:
        for n in [*load_export_meta(e, verify=False)["files"], "meta.json"]:
            shutil.copy2(digits_export / n, tmp / n)
    assert (e / "README.txt").read_text() == "my notes"
    load_extractor(e, backend="torch")
    count("data loss", "user files kept across saves (export)")
    # a user's file of the same name as one the new version writes: refused, nothing changed
    e2 = _copy(digits_export, tmp_path / "export2")
    (e2 / "frozen.int8.onnx").write_text("not lightcl's")
    before = tree_bytes(e2)
    with pytest.raises(StateError, match="frozen.int8.onnx"):
        with atomic_directory(e2, owned=owned_names) as tmp:
            for n in [*load_export_meta(e2, verify=False)["files"], "meta.json", "frozen.int8.onnx"]:
                shutil.copy2(digits_export / n if n != "frozen.int8.onnx" else e2 / n, tmp / n)
    assert tree_bytes(e2) == before and _litter(e2) == []
    count("data loss", "name clash with a user's file refused")


def test_json_output_never_overwrites_lightcl_files(base_state, digits_export, digits_ckpt, tmp_path):
    s = _copy(base_state, tmp_path / "state")
    e = _copy(digits_export, tmp_path / "export")
    ck = tmp_path / "ck"
    for suffix in (".json", ".safetensors"):
        shutil.copy2(str(digits_ckpt) + suffix, str(ck) + suffix)
    watched = {p: tree_bytes(p) for p in (s, e)}
    ck_bytes = {x: Path(str(ck) + x).read_bytes() for x in (".json", ".safetensors")}
    cases = [
        ["learn", e, "--state", s, "--resume", "--json", s / "state.json"],
        ["learn", e, "--state", s, "--resume", "--json", s / "head.safetensors"],
        ["learn", e, "--state", s, "--resume", "--json", e / "meta.json"],
        ["learn", e, "--state", s, "--resume", "--json", s],
        ["predict", s, "--dataset", "digits", "--export", e, "--json", s / "learner.safetensors"],
        ["predict", s, "--dataset", "digits", "--export", e, "--json", e / "frozen.onnx"],
        ["export", ck, "--out", e, "--json", e / "meta.json"],
        ["export", ck, "--out", tmp_path / "new", "--json", str(ck) + ".json"],
        ["bench", "update", e, "--json", e / "head.safetensors"],
        ["bench", "latency", e, "--json", e / "frozen.safetensors"],
        ["pretrain", "--dataset", "digits", "--out", ck, "--json", str(ck) + ".safetensors"],
    ]
    for argv in cases:
        rc, out, err = cli(argv)
        assert rc == 1 and ("overwrite" in err or "directory" in err), (argv, err)
        count("data loss", "--json at a lightcl file refused")
    assert {p: tree_bytes(p) for p in (s, e)} == watched
    assert {x: Path(str(ck) + x).read_bytes() for x in (".json", ".safetensors")} == ck_bytes


# ---------------------------------------------------------------- data loss (d): deep extra
def test_what_save_accepts_load_reads(base_state, digits_export, tmp_path):
    d = _copy(base_state, tmp_path / "state")
    ext = load_extractor(digits_export, backend="torch")
    lr = LightCL.load(d, ext)
    before = tree_bytes(d)
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    for bad in (deep, {"x": 10 ** 5000}):
        lr.extra = {"v": bad}
        with pytest.raises(InputError):
            lr.save(d)
        assert tree_bytes(d) == before
        count("data loss", "unreadable extra refused at save")
    nested: dict = {}
    cur = nested
    for _ in range(50):
        cur["k"] = {}
        cur = cur["k"]
    lr.extra = {"v": nested, "big": 10 ** 4000}
    lr.save(d)
    assert LightCL.load(d, ext).extra == lr.extra
    count("data loss", "nested extra round trip")
    # a forged state.json nested past the bound, or with a 5000-digit integer: one line, not a traceback
    for label, text in (("deep", "[" * 100000 + "]" * 100000), ("huge int", "1" * 5000)):
        d2 = _copy(base_state, tmp_path / label.replace(" ", "_"))

        def edit(doc, text=text):
            doc["extra"] = "@@"

        resign_state(d2, edit)
        (d2 / "state.json").write_text((d2 / "state.json").read_text().replace('"@@"', text))
        with pytest.raises(IntegrityError):
            LightCL.load(d2, ext)
        count("tracebacks", f"state.json {label}")


# ---------------------------------------------------------------- data loss (e): lookalike directories
def test_recovery_never_touches_directories_it_did_not_make(base_state, digits_export, tmp_path):
    d = _copy(base_state, tmp_path / "state")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    lookalikes = [f".state.tmp-{dead}-abcdef12-0123456789abcdef", f".state.old-{dead}-abcdef12-0123456789abcdef-ab",
                  f".state.tmp-{dead}-x", f".state.old-{dead}", ".state.tmp-1-2-3"]
    for name in lookalikes:
        (d.parent / name).mkdir()
        (d.parent / name / "thesis.tex").write_text("years of work")
    (d.parent / lookalikes[0] / SWAP_MARKER).write_text("fedcba9876543210")  # a marker that does not prove it
    snap = {n: tree_bytes(d.parent / n) for n in lookalikes}
    ext = load_extractor(digits_export, backend="torch")
    lr = LightCL.load(d, ext)
    lr.save(d)
    read_state_doc(d)
    recover_directory(d)
    shutil.move(d, tmp_path / "elsewhere")  # the state gone: a lookalike .old-* must not be put in its place
    recover_directory(d)
    assert not d.exists()
    assert {n: tree_bytes(d.parent / n) for n in lookalikes} == snap
    count("data loss", "lookalike swap directories left alone", )
    COUNTS["data loss: lookalike swap directories left alone"] += len(lookalikes) - 1


# ---------------------------------------------------------------- availability: an export killed between its renames
_EXPORT_KILLER = textwrap.dedent("""
    import os, shutil, signal, sys
    from lightcl.engine.export_dir import owned_names, load_export_meta
    from lightcl.engine.fileio import atomic_directory
    out, src = sys.argv[1], sys.argv[2]
    real = os.rename
    def rename(a, b, *x, **k):
        real(a, b, *x, **k)
        if os.path.abspath(a) == os.path.abspath(out):
            os.kill(os.getpid(), signal.SIGKILL)
    os.rename = rename
    with atomic_directory(out, owned=owned_names) as tmp:
        for n in [*load_export_meta(src, verify=False)["files"], "meta.json"]:
            shutil.copy2(os.path.join(src, n), tmp / n)
""")


def test_export_interrupted_between_renames_is_recovered_by_readers(digits_export, tmp_path):
    wreck = _copy(digits_export, tmp_path / "wreck" / "export")
    r = subprocess.run([sys.executable, "-c", _EXPORT_KILLER, str(wreck), str(digits_export)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL and not wreck.exists(), r.stderr[-2000:]
    for i, reader in enumerate(("load_export_meta", "load_extractor", "lightcl bench latency")):
        e = shutil.copytree(wreck.parent, tmp_path / f"e{i}", symlinks=True) / "export"
        if reader == "load_export_meta":
            load_export_meta(e)
        elif reader == "load_extractor":
            load_extractor(e, backend="ort", threads=1)
        else:
            rc, out, err = cli(["bench", "latency", e, "--backend", "torch", "--batch", "1", "--iters", "2",
                                "--quiet", "--threads", "1"])
            assert rc == 0, err
        assert e.is_dir() and _litter(e) == [], reader
        count("availability", f"export killed between renames, then {reader}")


# ---------------------------------------------------------------- integrity
def test_frozen_id_covers_every_byte_of_the_frozen_part(base_state, digits_export, tmp_path):
    import onnx

    ext = load_extractor(digits_export, backend="torch")
    # external data: the model's weights beside it, re-signed meta.json. Never read: refused, auto falls back.
    e = _copy(digits_export, tmp_path / "external")
    m = onnx.load(str(e / "frozen.onnx"))
    onnx.save_model(m, str(e / "frozen.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="frozen.onnx.data", size_threshold=0)

    def add(meta):
        meta["files"]["frozen.onnx.data"] = sha(e / "frozen.onnx.data")

    resign_export(e, add)
    with pytest.raises(IntegrityError, match="external data"):
        load_extractor(e, backend="ort")
    count("integrity", "ONNX external data refused")
    # frozen.safetensors tampered, meta.json re-signed but frozen_id kept: refused; frozen_id re-signed too:
    # a state learned on the original refuses it
    from safetensors.torch import load, save

    e2 = _copy(digits_export, tmp_path / "tampered")
    raw = (e2 / "frozen.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta_st = json.loads(raw[8:8 + n]).get("__metadata__")
    t = load(raw)
    k = next(k for k, v in t.items() if v.is_floating_point() and v.numel() > 100)
    t[k] = t[k] * 0.5
    (e2 / "frozen.safetensors").write_bytes(save(t, metadata=meta_st))
    resign_export(e2, keep_frozen_id=True)
    with pytest.raises(IntegrityError, match="frozen_id"):
        load_extractor(e2, backend="torch")
    resign_export(e2)
    other = load_extractor(e2, backend="torch")
    with pytest.raises(IntegrityError, match="frozen part"):
        LightCL.load(base_state, other)
    assert other.frozen_id != ext.frozen_id
    count("integrity", "frozen.safetensors tampered (meta re-signed)", )
    COUNTS["integrity: frozen.safetensors tampered (meta re-signed)"] += 1


def test_symlinked_metadata_leading_outside_is_refused(base_state, digits_export, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    e = _copy(digits_export, tmp_path / "export")
    shutil.move(e / "meta.json", outside / "meta.json")
    os.symlink(outside / "meta.json", e / "meta.json")
    with pytest.raises(IntegrityError, match="escapes"):
        load_export_meta(e)
    s = _copy(base_state, tmp_path / "state")
    shutil.move(s / "state.json", outside / "state.json")
    os.symlink(outside / "state.json", s / "state.json")
    with pytest.raises(IntegrityError, match="escapes"):
        read_state_doc(s)
    COUNTS["integrity: metadata symlinked outside refused"] += 2


# ---------------------------------------------------------------- hangs: FIFOs, devices, directories, loops
def _replace_with(p: Path, kind: str) -> None:
    p.unlink()
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dir":
        p.mkdir()
    elif kind == "loop":
        os.symlink(p.name, p)
    elif kind == "device":
        os.symlink("/dev/zero", p)


@pytest.mark.parametrize("kind", ["fifo", "dir", "loop", "device"])
def test_special_files_in_place_of_any_file_lightcl_reads(base_state, digits_export, digits_ckpt, tmp_path, kind):
    ext = load_extractor(digits_export, backend="torch")
    cases = {}
    for name in ("state.json", "head.safetensors", "learner.safetensors"):
        cases[f"state {name}"] = ("state", name, lambda d: LightCL.load(d, ext))
    for name in ("meta.json", "frozen.onnx", "frozen.safetensors", "head.safetensors"):
        cases[f"export {name}"] = ("export", name, lambda d: load_extractor(d, backend="auto"))
    cases["export head via load_head"] = ("export", "head.safetensors", lambda d: load_head(d))
    for suffix in (".json", ".safetensors"):
        cases[f"checkpoint {suffix}"] = ("ckpt", "digits16" + suffix, None)
    for label, (what, name, call) in cases.items():
        root = tmp_path / label.replace(" ", "_")
        if what == "state":
            d = _copy(base_state, root / "state")
        elif what == "export":
            d = _copy(digits_export, root / "export")
        else:
            d = root
            d.mkdir()
            for sfx in (".json", ".safetensors"):
                shutil.copy2(str(digits_ckpt) + sfx, d / ("digits16" + sfx))

            def call(_d, d=d):
                from lightcl.export.checkpoint import load_checkpoint

                load_checkpoint(d / "digits16")
        _replace_with(d / name, kind)
        with watchdog(20):
            with pytest.raises(LightCLError) as ei:
                call(d)
        assert "\n" not in str(ei.value), str(ei.value)
        count("hangs" if kind == "fifo" else "tracebacks", f"{kind.replace('fifo', 'FIFO')} in place of a file")


def test_fifo_image_and_dataset_file(base_state, digits_export, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    os.mkfifo(imgs / "frame.png")
    with watchdog(20):
        rc, out, err = cli(["predict", base_state, "--images", imgs, "--export", digits_export, "--backend", "torch"])
    assert rc == 1 and "FIFO" in err, err
    cif = tmp_path / "cifar-10-batches-py"
    cif.mkdir()
    for n in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "batches.meta"):
        os.mkfifo(cif / n)
    from lightcl.data.datasets import load_dataset

    with watchdog(20), pytest.raises(LightCLError, match="FIFO"):
        load_dataset("cifar10", "train", str(cif))
    COUNTS["hangs: FIFO in place of a file"] += 2


def test_image_name_with_a_newline_stays_on_its_line(base_state, digits_export, tmp_path):
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    x, _ = images(digits_export, [0, 1], n=2)
    for i, name in enumerate(("plain.png", "evil\nname.png")):
        Image.new("RGB", (8, 8), color=(i * 100, 50, 50)).save(imgs / name)
    rc, out, err = cli(["predict", base_state, "--images", imgs, "--export", digits_export, "--backend", "torch"])
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and any("evil\\nname.png" in ln for ln in lines), lines
    (imgs / "bad\nfile.png").write_bytes(b"not an image")
    rc, out, err = cli(["predict", base_state, "--images", imgs, "--export", digits_export, "--backend", "torch"])
    # skipped with one line (its name escaped), the others predicted, exit 4
    assert rc == 4 and "bad\\nfile.png" in err and len(out.strip().splitlines()) == 2, (out, err)
    COUNTS["tracebacks: image names with a newline"] += 2


def test_sigterm_to_the_cli_is_an_orderly_exit(digits_export, tmp_path):
    """`lightcl` turns SIGTERM into exit 143 with one line; whatever it was doing, no swap is left half done."""
    import threading

    state = tmp_path / "state"
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        rc, out, err = cli(["learn", digits_export, "--scenario", "smoke", "--state", state, "--epochs", "1",
                            "--batch-size", "128", "--backend", "torch", "--quiet"])
    finally:
        timer.cancel()
    assert rc == 143 and "terminated" in err, (rc, err)
    assert _litter(state) == []
    if state.exists():
        read_state_doc(state)  # a complete earlier save
    assert signal.getsignal(signal.SIGTERM) == before  # the CLI put the previous handler back
    count("data loss", "SIGTERM to lightcl: orderly exit")
