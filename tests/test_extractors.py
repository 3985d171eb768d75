"""Extractor backends: agreement, auto choice + its log line, integrity refusals, frozen BN modes, input checks."""
from __future__ import annotations

import logging
import shutil

import pytest
import torch

pytest.importorskip("onnxruntime")

from lightcl.engine.errors import (  # noqa: E402
    IntegrityError, MissingDependencyError, ShapeError, StateError)
from lightcl.engine.export_dir import frozen_id_of, load_export_meta, load_head  # noqa: E402
from lightcl.engine.extractors import Extractor, load_extractor  # noqa: E402
from lightcl.engine.fileio import write_json_atomic  # noqa: E402


@pytest.fixture(scope="module")
def export_dir(digits_ckpt, tmp_path_factory):
    """Legacy exporter (fast) + int8; the dynamo path is covered in test_export.py."""
    from lightcl.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("ext") / "exp"
    export_checkpoint(digits_ckpt, out, split="layer3", profile="jetson-nano", int8=True, calib_size=32,
                      progress=False)
    return out


@pytest.fixture(scope="module")
def other_export(digits_ckpt, tmp_path_factory):
    from lightcl.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("ext") / "other"
    export_checkpoint(digits_ckpt, out, split="layer2", profile="jetson-nano", progress=False)
    return out


@pytest.fixture(scope="module")
def images(export_dir):
    from lightcl.export.onnx_export import real_images

    meta = load_export_meta(export_dir)
    x, y = real_images("digits", "test", 24, meta["normalization"], seed=3)
    return x, y


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_backends_agree_on_real_images(export_dir, images):
    x, _ = images
    ref = load_extractor(export_dir, "torch")(x)
    for backend in ("ort", "ort-int8", "auto"):
        ext = load_extractor(export_dir, backend)
        assert isinstance(ext, Extractor)
        f = ext(x)
        assert f.shape == (x.shape[0], *ext.feature_shape) and f.dtype == torch.float32 and not f.requires_grad
        assert ext.frozen_id == load_export_meta(export_dir)["frozen_id"]
        if backend == "ort-int8":
            cos = torch.nn.functional.cosine_similarity(f.flatten(1), ref.flatten(1), dim=1)
            assert cos.min() > 0.98
        else:
            assert (f - ref).abs().max() <= 1e-4
        info = ext.info()
        for k in ("backend", "provider", "device", "threads", "file"):
            assert k in info
    assert load_extractor(export_dir, "ort").info()["provider"] == "CPUExecutionProvider"


def test_auto_picks_ort_on_cpu_and_logs_one_line(export_dir, caplog):
    with caplog.at_level(logging.INFO, logger="lightcl"):
        ext = load_extractor(export_dir)
    recs = [r for r in caplog.records if r.name == "lightcl"]
    assert len(recs) == 1
    assert ext.info()["backend"] == "ort" and "auto" in recs[0].getMessage()
    assert "CPUExecutionProvider" in recs[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lightcl"):
        ext = load_extractor(export_dir, frozen_bn="train")
    assert ext.info()["backend"] == "torch" and "frozen_bn" in caplog.records[-1].getMessage()


def test_ort_session_options(export_dir, images):
    ext = load_extractor(export_dir, "ort", threads=1, arena=False)
    so = ext.session.get_session_options()
    assert so.intra_op_num_threads == 1 and not so.enable_cpu_mem_arena
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spin = load_extractor(export_dir, "ort", spin=True, graph_optimization="basic")
    assert spin.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert (spin(images[0]) - ext(images[0])).abs().max() <= 1e-4


def test_tampered_frozen_onnx_refused(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path / "tampered")
    data = bytearray((d / "frozen.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "frozen.onnx").write_bytes(bytes(data))
    for backend in ("torch", "ort", "auto"):
        with pytest.raises(IntegrityError, match="frozen.onnx"):
            load_extractor(d, backend)


def test_foreign_frozen_onnx_refused(export_dir, other_export, tmp_path):
    d = _copy(export_dir, tmp_path / "foreign")
    shutil.copy2(other_export / "frozen.onnx", d / "frozen.onnx")
    with pytest.raises(IntegrityError, match="frozen.onnx"):
        load_extractor(d, "ort")
    # even with meta.json rewritten to accept it, the torch weights still name their own frozen part
    meta = load_export_meta(other_export)
    mine = load_export_meta(export_dir, verify=False)
    mine["files"]["frozen.onnx"] = meta["files"]["frozen.onnx"]
    mine["frozen_id"] = frozen_id_of(mine["files"])
    write_json_atomic(d / "meta.json", mine)
    with pytest.raises(IntegrityError, match="mixes two exports"):
        load_extractor(d, "torch")


def test_missing_or_tampered_files(export_dir, tmp_path):
    d = _copy(export_dir, tmp_path / "missing")
    (d / "frozen.int8.onnx").unlink()
    with pytest.raises(StateError, match="frozen.int8.onnx"):
        load_extractor(d, "ort")
    d2 = _copy(export_dir, tmp_path / "head")
    (d2 / "head.safetensors").write_bytes((d2 / "head.safetensors").read_bytes() + b"x")
    with pytest.raises(IntegrityError, match="head.safetensors"):
        load_head(d2)
    with pytest.raises(StateError):
        load_extractor(tmp_path / "nope")


def test_frozen_bn_train_drifts_eval_does_not(export_dir, images):
    x, _ = images
    for mode, should_change in (("eval", False), ("train", True)):
        ext = load_extractor(export_dir, "torch", frozen_bn=mode)
        bn = ext.module.blocks[0].bn1
        before = bn.running_mean.clone(), bn.running_var.clone()
        w = ext.module.blocks[0].conv1.weight.clone()
        ext(x)
        changed = not (torch.equal(before[0], bn.running_mean) and torch.equal(before[1], bn.running_var))
        assert changed is should_change, mode
        assert torch.equal(w, ext.module.blocks[0].conv1.weight)
        assert not any(p.requires_grad for p in ext.module.parameters())


def test_features_feed_a_trainable_head(export_dir, images):
    x, y = images
    head = load_head(export_dir)
    for backend in ("torch", "ort"):
        f = load_extractor(export_dir, backend)(x)
        loss = torch.nn.functional.cross_entropy(head(f), y)
        loss.backward()
        assert head.fc.weight.grad is not None
        head.zero_grad()


def test_input_checks_and_missing_runtimes(export_dir):
    ext = load_extractor(export_dir, "ort")
    with pytest.raises(ShapeError):
        ext(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ShapeError):
        ext(torch.zeros(2, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(ShapeError):
        ext(torch.zeros(0, 3, 32, 32))
    with pytest.raises(Exception, match="unknown option"):
        load_extractor(export_dir, "torch", spin=True)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError):
            load_extractor(export_dir, "tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(MissingDependencyError):
            load_extractor(export_dir, "ort", device="cuda")


def test_torch_backend_imports_nothing_from_export_or_bench(export_dir):
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from lightcl.engine.extractors import load_extractor\n"
            f"load_extractor({str(export_dir)!r}, 'torch')(torch.zeros(1, 3, 32, 32))\n"
            "bad = [m for m in sys.modules if m.startswith(('lightcl.export', 'lightcl.bench', 'onnxruntime'))]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- the template, the options, the registry
import dataclasses  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Optional  # noqa: E402

from lightcl.engine.errors import InputError, NonFiniteError  # noqa: E402
from lightcl.engine.extractors import options_for, register_backend  # noqa: E402
from lightcl.engine.extractors.base import BackendOptions, BaseExtractor, check_int  # noqa: E402
from lightcl.engine.extractors.registry import backend_classes, backend_names, unregister_backend  # noqa: E402


@dataclasses.dataclass(frozen=True)
class _Float64Options(BackendOptions):
    max_batch: Optional[int] = None

    def validate(self) -> None:
        check_int("max_batch", self.max_batch, 1, optional=True)


class _Float64Extractor(BaseExtractor):
    """A real (if slow) fifth backend: frozen.safetensors in float64. Not thread-safe by declaration, and it
    records whether two runs ever overlapped."""

    name = "test-float64"
    Options = _Float64Options
    concurrent = False

    def _open(self, options):
        from lightcl.engine.export_dir import export_file
        from lightcl.engine.frozen import load_frozen

        self.net, _ = load_frozen(export_file(self.export_dir, self.meta, "frozen.safetensors"))
        self.net.set_bn_mode("eval")
        self.net.double()
        self.max_batch = options.max_batch
        self.file = "frozen.safetensors"
        self.runs = self.active = self.most_at_once = 0
        self._count = threading.Lock()

    def _run(self, x):
        with self._count:
            self.runs += 1
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
        time.sleep(0.01)  # long enough for a second thread to get in, were the template not serialising
        with torch.no_grad():
            out = self.net(x.double()).float()
        with self._count:
            self.active -= 1
        return out


class _WrongShapeExtractor(_Float64Extractor):
    name = "test-wrong-shape"

    def _run(self, x):
        return super()._run(x)[:, :1]


@pytest.fixture
def float64_backend():
    register_backend(_Float64Extractor)
    register_backend(_WrongShapeExtractor)
    yield _Float64Extractor
    unregister_backend(_Float64Extractor.name)
    unregister_backend(_WrongShapeExtractor.name)


def test_registered_backend_runs_behind_the_template(export_dir, images, float64_backend):
    from lightcl.engine.extractors import BACKENDS

    x, _ = images
    assert "test-float64" in BACKENDS and "test-float64" in backend_names()
    ext = load_extractor(export_dir, "test-float64")
    assert isinstance(ext, Extractor) and ext.info()["backend"] == "test-float64"
    assert (ext(x) - load_extractor(export_dir, "torch")(x)).abs().max() <= 1e-4
    assert ext.runs == 1 and ext.last_run_ms > 0
    # the template refuses bad input before the backend runs
    for bad, err in ((x.double(), ShapeError), (x[:, :, :16], ShapeError), (x[:0], ShapeError),
                     (torch.full_like(x, float("nan")), NonFiniteError), (x.numpy(), InputError)):
        with pytest.raises(err):
            ext(bad)
    assert ext.runs == 1
    bounded = load_extractor(export_dir, "test-float64", max_batch=4)
    with pytest.raises(ShapeError, match="1..4"):
        bounded(x)
    assert bounded(x[:4]).shape[0] == 4 and bounded.runs == 1
    # and checks what comes back
    with pytest.raises(IntegrityError, match="test-wrong-shape"):
        load_extractor(export_dir, "test-wrong-shape")(x)


def test_template_serialises_a_backend_that_is_not_thread_safe(export_dir, images, float64_backend):
    x, _ = images
    ext = load_extractor(export_dir, "test-float64")
    want = ext(x[:2])
    got, errors = [], []

    def worker():
        try:
            for _ in range(3):
                got.append(ext(x[:2]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 12 and all(torch.equal(g, want) for g in got)
    assert ext.runs == 13 and ext.most_at_once == 1


def test_registry_refuses_what_the_template_cannot_run(float64_backend):
    class NoRun(BaseExtractor):
        name = "test-no-run"

        def _open(self, options):
            pass

    class Auto(_Float64Extractor):
        name = "auto"

    class NotOptions(_Float64Extractor):
        name = "test-bad-options"
        Options = dict

    for cls, msg in ((NoRun, "_run"), (Auto, "auto"), (NotOptions, "Options"), (_Float64Extractor, "already"),
                     (object, "BaseExtractor")):
        with pytest.raises(InputError, match=msg):
            register_backend(cls)
    with pytest.raises(InputError, match="test-no-run"):
        load_extractor("unused", "test-no-run")


def test_options_are_typed_and_checked_the_same_way_for_every_backend(export_dir):
    for name, cls in backend_classes().items():
        defaults = cls.Options()  # every field has a default
        assert set(defaults.as_dict()) == set(cls.Options.names())
        with pytest.raises(InputError) as e:
            load_extractor(export_dir, name, no_such_option=1)
        line = str(e.value)
        assert "\n" not in line and "no_such_option" in line and name in line
        for valid in cls.Options.names():
            assert valid in line, (name, valid, line)
    for backend, bad in (("ort", {"spin": "yes"}), ("ort", {"inter_threads": 0}), ("ort", {"trt_max_batch": 0}),
                         ("ort", {"providers": "cuda"}), ("ort", {"log_severity": 9}), ("torch", {"threads": 1.5}),
                         ("tensorrt", {"precision": "fp8"}), ("auto", {"graph_optimization": "max"})):
        with pytest.raises(InputError):  # auto no longer falls back to torch on a bad value: it says so
            load_extractor(export_dir, backend, **bad)


def test_options_for_gives_each_backend_its_own_part():
    assert options_for("torch", threads=2, spin=False) == {"threads": 2}
    assert options_for("ort", threads=None, spin=False) == {"spin": False}
    assert options_for("tensorrt", threads=2, spin=False) == {}
    assert options_for("auto", threads=2, spin=False, nonsense=1) == {"threads": 2, "spin": False}
    with pytest.raises(InputError, match="unknown extractor backend"):
        options_for("gpu", threads=1)


def test_registry_and_cli_choices_import_no_torch():
    import subprocess
    import sys

    code = ("import sys\n"
            "from lightcl.engine.extractors.registry import choices\n"
            "from lightcl.commands import _args\n"
            "assert 'torch' in choices() and 'auto' in choices()\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_none_means_the_default(export_dir):
    ext = load_extractor(export_dir, "ort", threads=None, inter_threads=None, spin=None)
    assert ext.options == load_extractor(export_dir, "ort").options
    assert ext.session.get_session_options().inter_op_num_threads == 1


def test_info_lists_every_backend_and_what_it_still_needs(float64_backend):
    import importlib.util

    from lightcl.engine.runtime_info import extractor_backends

    got = extractor_backends()
    assert list(got) == list(backend_names()) and "test-float64" in got
    assert got["torch"].startswith("ok") and got["ort"].startswith("ok")  # onnxruntime: importorskip above
    trt_here = importlib.util.find_spec("tensorrt") is not None
    assert got["tensorrt"].startswith("ok" if trt_here else "needs tensorrt")
