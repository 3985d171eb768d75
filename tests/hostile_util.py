"""Shared helpers of the hostile tests: a small real state, re-signing edited files, the CLI in-process,
a watchdog against hangs, and counting what was tried per class (docs/reliability.md's table)."""
from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

COUNTS: collections.Counter = collections.Counter()


def count(cls: str, what: str = "cases") -> None:
    COUNTS[f"{cls}: {what}"] += 1


def sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def tree_bytes(d: Path) -> dict:
    """Every file under ``d`` (hidden ones too) and its bytes: what must be left unchanged."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() and not p.is_symlink() else str(p.readlink())
                                    if p.is_symlink() else None)
            for p in sorted(Path(d).rglob("*"))}


def cli(argv: list[str]) -> tuple[int, str, str]:
    """``lightcl.cli.main`` in-process; a failure must be exactly one stderr line, no traceback (exit 4,
    "done but some inputs skipped", says one line per skipped input and a summary line)."""
    from lightcl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            rc = e.code
    e = err.getvalue()
    if rc == 4:  # done, some inputs skipped (`predict --images`): one line per skipped input and a summary
        assert "Traceback" not in e and "skipped" in e.splitlines()[-1], e
    elif rc:
        lines = [ln for ln in e.splitlines() if ln.strip() and not ln.startswith("[")]  # progress lines start with [
        assert len(lines) == 1, (argv, e)
        assert "Traceback" not in e, e
    return rc, out.getvalue(), e


@contextlib.contextmanager
def watchdog(seconds: int = 20):
    """A call that blocks (a FIFO opened for reading) fails the test instead of hanging it."""
    def boom(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def images(export: Path, classes, n: int = 8):
    """Real digits test images of ``classes``, normalised like the export wants."""
    from lightcl.data.datasets import load_dataset
    from lightcl.data.tasks import TensorData
    from lightcl.data.transforms import Preprocess
    from lightcl.engine.export_dir import load_export_meta

    meta = load_export_meta(export, verify=False)
    pre = Preprocess(meta["normalization"]["mean"], meta["normalization"]["std"])
    data = TensorData(load_dataset("digits", "test"))
    idx = torch.as_tensor(np.flatnonzero(np.isin(data.y.numpy(), classes))[:n])
    return pre(data.x[idx]), data.y[idx]


def make_state(export: Path, out: Path, extra: dict | None = None):
    """A real learner state: one finished task, one open task (buffer, targets, masks, momentum)."""
    from lightcl.engine.export_dir import load_head
    from lightcl.engine.extractors import load_extractor
    from lightcl.engine.learner import LightCL

    ext = load_extractor(export, backend="torch")
    lr = LightCL(ext, load_head(export), num_classes=4, momentum=0.9, seed=0)
    lr.begin_task(0, [0, 1])
    lr.observe(*images(export, [0, 1]))
    lr.end_task()
    lr.begin_task(1, [2, 3])
    lr.observe(*images(export, [2, 3]))
    lr.extra.update(export_dir=str(export), **(extra or {}))
    lr.save(out)
    return lr, ext


def resign_state(d: Path, edit_doc=None, tensors_edit=None) -> None:
    """Apply an edit to state.json / learner.safetensors and re-sign both (sha256 + self_sha256): a forger's
    state, valid checksums, malformed values."""
    from safetensors.torch import load, save

    from lightcl.engine.state import SELF_KEY, _doc_digest

    if tensors_edit is not None:
        t = load((d / "learner.safetensors").read_bytes())
        tensors_edit(t)
        (d / "learner.safetensors").write_bytes(save(t))
    doc = json.loads((d / "state.json").read_text())
    if edit_doc is not None:
        edit_doc(doc)
    doc["files"] = {n: sha(d / n) for n in ("head.safetensors", "learner.safetensors")}
    doc[SELF_KEY] = _doc_digest(doc)
    (d / "state.json").write_text(json.dumps(doc))


def resign_export(d: Path, edit_meta=None, keep_frozen_id: bool = False) -> dict:
    """Recompute meta.json's checksums (and frozen_id unless ``keep_frozen_id``) after files were edited."""
    from lightcl.engine.export_dir import frozen_id_of

    meta = json.loads((d / "meta.json").read_text())
    for n in list(meta["files"]):
        if (d / n).is_file():
            meta["files"][n] = sha(d / n)
    if not keep_frozen_id:
        meta["frozen_id"] = frozen_id_of(meta["files"])
    if edit_meta is not None:
        edit_meta(meta)
    (d / "meta.json").write_text(json.dumps(meta))
    return meta


@pytest.fixture(scope="module", autouse=True)
def report_hostile_counts():
    """Both hostile modules share COUNTS; each writes the sum so far when it ends (conftest.write_counts)."""
    from conftest import write_counts

    yield
    write_counts("hostile", COUNTS)
