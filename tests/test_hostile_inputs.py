"""Issue 9, part B (inputs): exhaustion, tracebacks where one line is promised, silent nonsense.

Real files forged the way a hostile tester would (valid checksums, malformed values), real ONNX models,
real CIFAR-format pickles, the real CLI in-process (one stderr line, exit 1, files unchanged).
"""
from __future__ import annotations

import json
import pickle
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_util import report_hostile_counts  # noqa: F401  (autouse: writes the case counts)
from hostile_util import COUNTS, cli, count, images, make_state, resign_export, resign_state, sha, tree_bytes

from lightcl.engine.errors import InputError, IntegrityError, LightCLError
from lightcl.engine.export_dir import load_export_meta, load_head
from lightcl.engine.extractors import load_extractor
from lightcl.engine.learner import LightCL
from lightcl.engine.validate import machine_cpus


@pytest.fixture(scope="module")
def env(digits_export, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile_in") / "state"
    lr, ext = make_state(digits_export, d)
    return {"state": d, "learner": lr, "ext": ext, "export": digits_export}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- exhaustion
def test_threads_are_bounded_by_the_machine(env, digits_ckpt, tmp_path):
    e = env["export"]
    huge = 100000
    before = threading.active_count()
    cases = [
        ["learn", e, "--state", tmp_path / "s", "--threads", huge],
        ["bench", "update", e, "--threads", huge],
        ["bench", "latency", e, "--threads", huge],
        ["bench", "suite", "--suite", "smoke", "--out", tmp_path / "o", "--threads", huge],
        ["analyze", digits_ckpt, "--dataset", "digits", "--threads", huge],
        ["pretrain", "--dataset", "digits", "--out", tmp_path / "p", "--threads", huge],
    ]
    for argv in cases:
        rc, _, err = cli(argv)
        assert rc == 1 and "CPU" in err, (argv, err)
        count("exhaustion", "--threads 100000")
    for key in ("threads", "inter_threads"):
        with pytest.raises(InputError, match="CPU"):
            load_extractor(e, backend="ort", **{key: huge})
        count("exhaustion", "load_extractor threads")
    load_extractor(e, backend="ort", threads=machine_cpus())  # the machine's own count is fine
    assert threading.active_count() <= before + 1
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()


def test_batch_sizes_are_bounded_by_memory(env, digits_ckpt, tmp_path):
    e, s = env["export"], env["state"]
    before = tree_bytes(s)
    cases = [
        ["bench", "update", e, "--batch", 1000000],
        ["bench", "latency", e, "--batch", "1,100000000"],
        ["learn", e, "--state", tmp_path / "s", "--batch-size", 10 ** 9],
        ["predict", s, "--dataset", "digits", "--batch-size", 10 ** 12],
        ["pretrain", "--dataset", "digits", "--out", tmp_path / "p", "--width", 16, "--batch-size", 10 ** 9],
        ["analyze", digits_ckpt, "--dataset", "digits", "--batch-size", 10 ** 9],
    ]
    for argv in cases:
        rc, _, err = cli(argv)
        assert rc == 1 and "GiB" in err, (argv, err)
        count("exhaustion", "batch beyond memory")
    assert tree_bytes(s) == before and not (tmp_path / "s").exists()


# ---------------------------------------------------------------- tracebacks: JSON, checkpoints, heads
def test_malformed_json_values_are_one_line(env, tmp_path):
    e = env["export"]
    cases = {
        "huge integer": lambda t: t.replace('"format"', '"x": ' + "9" * 5000 + ', "format"', 1),
        "deeply nested": lambda t: t.replace('"format"', '"x": ' + "[" * 100000 + "]" * 100000 + ', "format"', 1),
        "nested past the bound": lambda t: t.replace('"format"', '"x": ' + "[" * 80 + "]" * 80 + ', "format"', 1),
        "not UTF-8": lambda t: t.replace('"format"', '"\udcff"'.encode("utf-8", "surrogatepass").decode("latin1")),
        "too big": lambda t: t + " " * (65 << 20),
    }
    for label, edit in cases.items():
        d = _copy(e, tmp_path / label.replace(" ", "_"))
        text = (d / "meta.json").read_text()
        (d / "meta.json").write_bytes(edit(text).encode("latin1") if label == "not UTF-8" else edit(text).encode())
        with pytest.raises(IntegrityError if label != "too big" else LightCLError):
            load_export_meta(d)
        rc, _, err = cli(["bench", "latency", d, "--backend", "torch", "--quiet"])
        assert rc == 1, label
        count("tracebacks", f"meta.json {label}")


def _meta_edits():
    return {
        "normalization std 0": lambda m: m["normalization"].update(std=[0.0, 1.0, 1.0]),
        "normalization strings": lambda m: m["normalization"].update(mean=["a", "b", "c"]),
        "normalization length": lambda m: m["normalization"].update(mean=[0.5]),
        "normalization not an object": lambda m: m.update(normalization=[1, 2]),
        "feature shape negative": lambda m: m.update(feature_shape=[-64, 8, 8]),
        "feature shape strings": lambda m: m.update(feature_shape=["64", 8, 8]),
        "input shape huge": lambda m: m.update(input_shape=[3, 10 ** 9, 32]),
        "input shape rank": lambda m: m.update(input_shape=[32, 32]),
        "checksum not hex": lambda m: m["files"].update({"head.safetensors": "zz"}),
        "checksum a number": lambda m: m["files"].update({"head.safetensors": 7}),
        "files a list": lambda m: m.update(files=["frozen.onnx"]),
        "frozen_id a number": lambda m: m.update(frozen_id=12),
        "onnx input name a list": lambda m: m.update(onnx={"input_name": [1]}),
    }


def test_malformed_meta_values_are_refused(env, tmp_path):
    for label, edit in _meta_edits().items():
        d = _copy(env["export"], tmp_path / label.replace(" ", "_"))
        resign_export(d, edit)
        for backend in ("auto", "torch"):
            with pytest.raises(IntegrityError, match="meta.json"):
                load_extractor(d, backend=backend)
        count("tracebacks", "meta.json malformed value")


def _st_header(data: bytes) -> tuple[int, dict]:
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8:8 + n])


def test_malformed_backbone_checkpoints(digits_ckpt, tmp_path):
    from safetensors.torch import load, save

    from lightcl.export.checkpoint import load_checkpoint

    raw = Path(str(digits_ckpt) + ".safetensors").read_bytes()
    good_meta = json.loads(Path(str(digits_ckpt) + ".json").read_text())
    n, header = _st_header(raw)
    t = load(raw)
    k = next(iter(t))
    weights = {
        "absurd header length": (2 ** 62).to_bytes(8, "little") + raw[8:],
        "non-JSON header": n.to_bytes(8, "little") + b"{" + b"x" * (n - 1) + raw[8 + n:],
        "empty file": b"",
        "header not an object": (2).to_bytes(8, "little") + b"[]",
        "float64 tensor": save({**t, k: t[k].double()}),
    }
    metas = {
        "arch missing": lambda m: m.pop("arch"),
        "arch unknown": lambda m: m.update(arch="vgg"),
        "width a string": lambda m: m.update(width="16"),
        "width huge": lambda m: m.update(width=10 ** 6),
        "num_classes missing": lambda m: m.pop("num_classes"),
        "num_classes negative": lambda m: m.update(num_classes=-3),
        "input_size missing": lambda m: m.pop("input_size"),
        "input_size scalar": lambda m: m.update(input_size=32),
        "input_size strings": lambda m: m.update(input_size=["3", 32, 32]),
        "sha256 missing": lambda m: m.pop("sha256"),
    }
    cases = [(label, data, None) for label, data in weights.items()] + [(label, raw, fn) for label, fn in metas.items()]
    for label, data, edit in cases:
        p = tmp_path / label.replace(" ", "_")
        p.mkdir()
        ck = p / "ck"
        Path(str(ck) + ".safetensors").write_bytes(data)
        meta = dict(good_meta, sha256=sha(Path(str(ck) + ".safetensors")))
        if edit is not None:
            edit(meta)
        Path(str(ck) + ".json").write_text(json.dumps(meta))
        with pytest.raises(IntegrityError):
            load_checkpoint(ck)
        rc, _, err = cli(["export", ck, "--out", p / "out", "--quiet"])
        assert rc == 1 and not (p / "out").exists(), (label, err)
        count("tracebacks", "malformed backbone checkpoint")


def test_head_tensors_of_another_dtype_or_not_finite(env, tmp_path):
    from safetensors.torch import load, save

    e = env["export"]
    raw = (e / "head.safetensors").read_bytes()
    _, header = _st_header(raw)
    md = header["__metadata__"]
    t = load(raw)
    k = next(k for k, v in t.items() if v.is_floating_point() and v.dim() == 4)
    edits = {"float64": lambda v: v.double(), "float16": lambda v: v.half(),
             "NaN": lambda v: v.clone().fill_(float("nan"))}
    for label, fn in edits.items():
        d = _copy(e, tmp_path / label)
        (d / "head.safetensors").write_bytes(save({**t, k: fn(t[k])}, metadata=md))
        resign_export(d)
        with pytest.raises(IntegrityError, match=k):
            load_head(d)
        count("tracebacks", f"head tensor {label}")


# ---------------------------------------------------------------- tracebacks: re-signed states
def _state_edits(lr):
    rng_len = lr.generator.get_state().numel()
    mask = next(k for k in lr.memory.tensors() if k.startswith("mask."))
    doc = {
        "tasks not a list": lambda d: d.update(tasks="x"),
        "task id a string": lambda d: d.update(tasks=[["0", [0, 1]], [1, [2, 3]]]),
        "class id a float": lambda d: d.update(tasks=[[0, [0.5, 1]], [1, [2, 3]]]),
        "class index beyond the classifier": lambda d: d.update(class_index=[[0, 0], [1, 1], [2, 2], [3, 99]]),
        "class index negative": lambda d: d.update(class_index=[[0, -1], [1, 1], [2, 2], [3, 3]]),
        "two classes one output": lambda d: d.update(class_index=[[0, 0], [1, 0], [2, 2], [3, 3]]),
        "current task unknown": lambda d: d.update(current_task=99),
        "finished task a bool": lambda d: d.update(finished_tasks=[True]),
        "counter a string": lambda d: d.update(counters={"steps": "many"}),
        "counter huge": lambda d: d.update(counters={"steps": 2 ** 70}),
        "extra a list": lambda d: d.update(extra=[1]),
        "memory seen negative": lambda d: d["memory"].update(seen=-5),
        "seed 2**70": lambda d: d["config"].update(seed=2 ** 70),
        "lr 1e308": lambda d: d["config"].update(lr=1e308),
        "config a list": lambda d: d.update(config=[1]),
    }
    tensors = {
        "short RNG state": lambda t: t.update({"rng.generator": t["rng.generator"][: rng_len // 2].clone()}),
        "RNG state float": lambda t: t.update({"rng.generator": t["rng.generator"].float()}),
        "short mask": lambda t: t.update({mask: t[mask][:3].clone()}),
        "mask values 7": lambda t: t.update({mask: torch.full_like(t[mask], 7)}),
        "mask of an unknown tap": lambda t: t.update({"mask.nowhere": t[mask].clone()}),
        "buffer features wrong shape": lambda t: t.update({"buffer.features": t["buffer.features"][:, :3].clone()}),
        "buffer labels of unknown classes": lambda t: t.update({"buffer.labels": t["buffer.labels"] + 100}),
        "buffer labels float": lambda t: t.update({"buffer.labels": t["buffer.labels"].float()}),
        "buffer features NaN": lambda t: t.update({"buffer.features": t["buffer.features"] * float("nan")}),
        "target of another width": lambda t: t.update({k: v[:, :1].clone() for k, v in list(t.items())
                                                       if k.startswith("target.") and v.dim() == 4}),
        "momentum of a missing parameter": lambda t: t.update({"optim.state.999.momentum_buffer": torch.zeros(1)}),
        "unknown tensor": lambda t: t.update({"evil": torch.zeros(1)}),
    }
    return doc, tensors


def test_resigned_states_with_malformed_values(env, tmp_path):
    ext = env["ext"]
    doc_edits, tensor_edits = _state_edits(env["learner"])
    cases = [(k, fn, None) for k, fn in doc_edits.items()] + [(k, None, fn) for k, fn in tensor_edits.items()]
    for label, de, te in cases:
        d = _copy(env["state"], tmp_path / label.replace(" ", "_").replace("*", ""))
        resign_state(d, de, te)
        before = tree_bytes(d)
        with pytest.raises(IntegrityError):
            LightCL.load(d, ext)
        rc, _, err = cli(["predict", d, "--dataset", "digits", "--backend", "torch"])
        assert rc == 1, (label, err)
        assert tree_bytes(d) == before
        count("tracebacks", "re-signed state with a malformed value")
    d = _copy(env["state"], tmp_path / "control")
    resign_state(d)  # control: re-signing alone changes nothing
    LightCL.load(d, ext)


# ---------------------------------------------------------------- tracebacks: crafted frozen.onnx
def test_crafted_frozen_onnx_is_refused_and_auto_falls_back(env, tmp_path):
    import onnx
    from safetensors.torch import load, save

    e = env["export"]
    m = onnx.load(str(e / "frozen.onnx"))
    smaller = onnx.ModelProto()
    smaller.CopyFrom(m)
    for i, v in enumerate((3, 16, 16)):
        smaller.graph.input[0].type.tensor_type.shape.dim[i + 1].dim_value = v
    double = onnx.ModelProto()
    double.CopyFrom(m)
    double.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    models = {"garbage bytes": b"\x08\x07garbage" * 100, "empty": b"",
              "other input size": smaller.SerializeToString(), "other dtype": double.SerializeToString()}
    raw = (e / "frozen.safetensors").read_bytes()
    _, header = _st_header(raw)
    x, _ = images(e, [0, 1], n=2)
    for label, data in models.items():
        d = _copy(e, tmp_path / label.replace(" ", "_"))
        (d / "frozen.onnx").write_bytes(data)
        resign_export(d)
        with pytest.raises(IntegrityError, match="frozen.onnx"):
            load_extractor(d, backend="ort")
        # a thorough forger also re-binds frozen.safetensors to the new frozen.onnx: auto must fall back to torch
        md = dict(header["__metadata__"], onnx_sha256=sha(d / "frozen.onnx"))
        (d / "frozen.safetensors").write_bytes(save(load(raw), metadata=md))
        resign_export(d)
        ext = load_extractor(d, backend="auto")
        assert ext.info()["backend"] == "torch" and ext(x).shape[0] == 2, label
        count("tracebacks", "crafted frozen.onnx (ort refused, auto fell back)")


# ---------------------------------------------------------------- tracebacks: datasets
def test_cifar_batches_with_malformed_labels(tmp_path):
    from lightcl.data.datasets import load_dataset

    data = np.zeros((4, 3072), np.uint8)
    for label, labels in {"byte strings": [b"1", b"2", b"3", b"4"], "2-D": [[0], [1], [2], [3]],
                          "strings": ["a", "b", "c", "d"], "floats": [0.5, 1.0, 2.0, 3.0],
                          "too few": [0, 1], "nested ragged": [[0, 1], [2]]}.items():
        d = tmp_path / label.replace(" ", "_") / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (d / b).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
        (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
        with pytest.raises(IntegrityError, match="labels"):
            load_dataset("cifar10", "test", str(d))
        count("tracebacks", f"CIFAR labels: {label}")


# ---------------------------------------------------------------- tracebacks: numbers that overflow later, API inputs
def test_numbers_that_pass_validation_and_then_overflow(env, tmp_path):
    e = env["export"]
    for flag, value in (("--seed", 2 ** 70), ("--seed", -(2 ** 64)), ("--lr", 1e308), ("--beta", 1e300),
                        ("--momentum", 5.0), ("--buffer-size", 10 ** 12)):
        rc, _, err = cli(["learn", e, "--state", tmp_path / "s", "--backend", "torch", flag, value])
        assert rc == 1 and flag.lstrip("-").replace("-", "_") in err, (flag, err)
        count("tracebacks", f"{flag} overflow")
    assert not (tmp_path / "s").exists()


def test_api_inputs_torch_cannot_use(env):
    lr, ext, e = env["learner"], env["ext"], env["export"]
    x, y = images(e, [2, 3], n=4)
    before = tree_bytes(env["state"])
    weird = {
        "meta device": x.to("meta"),
        "sparse": x.to_sparse(),
        "nested": torch.nested.nested_tensor([x[0], x[1]], layout=torch.jagged),
    }
    for label, bad in weird.items():
        for what, call in (("observe", lambda b: lr.observe(b, y[: len(b)] if b.layout == torch.strided and not b.is_nested
                                                             else y)),
                           ("predict", lambda b: lr.predict(b)), ("extractor", lambda b: ext(b))):
            with pytest.raises(InputError, match=label.split()[0]):
                call(bad)
            count("tracebacks", f"API input on {label}")
    with pytest.raises(InputError):
        lr.observe(x, y.to_sparse())
    head = load_head(e)
    for label, args in {"None extractor": (None, head), "None head": (ext, None), "head a dict": (ext, {})}.items():
        with pytest.raises(InputError):
            LightCL(*args, num_classes=4)
        count("tracebacks", "API: None extractor/head")
    for kw in ({"num_classes": 2 ** 62}, {"seed": 2 ** 70}, {"lr": 1e308}):
        with pytest.raises(InputError):
            LightCL(ext, load_head(e), **kw)
        count("tracebacks", "API: absurd learner numbers")
    assert tree_bytes(env["state"]) == before


def test_every_cli_error_is_one_line_even_with_newlines_in_paths(env, tmp_path):
    rc, _, err = cli(["predict", env["state"], "--dataset", "digits", "--export", tmp_path / "no\nsuch\nexport"])
    assert rc == 1 and err.count("\n") == 1, err
    rc, _, err = cli(["learn", tmp_path / "a\nb", "--state", tmp_path / "s", "--threads", "x\ny"])
    assert rc == 2 and err.count("\n") == 1, err
    from lightcl.cli import one_line

    assert one_line("a\n  b\tc\n" + "x" * 5000).startswith("a b c") and len(one_line("y" * 5000)) <= 600
    COUNTS["tracebacks: multi-line messages"] += 2


# ---------------------------------------------------------------- silent nonsense
def test_non_finite_backbone_weights_are_refused_at_export(digits_ckpt, tmp_path):
    from safetensors.torch import load, save

    raw = Path(str(digits_ckpt) + ".safetensors").read_bytes()
    meta = json.loads(Path(str(digits_ckpt) + ".json").read_text())
    _, header = _st_header(raw)
    t = load(raw)
    k = next(k for k, v in t.items() if v.is_floating_point() and v.dim() == 4)
    for label, value in (("NaN", float("nan")), ("Inf", float("inf"))):
        ck = tmp_path / label / "ck"
        ck.parent.mkdir()
        bad = t[k].clone()
        bad.view(-1)[0] = value
        Path(str(ck) + ".safetensors").write_bytes(save({**t, k: bad}, metadata=header.get("__metadata__")))
        Path(str(ck) + ".json").write_text(json.dumps(dict(meta, sha256=sha(Path(str(ck) + ".safetensors")))))
        rc, _, err = cli(["export", ck, "--out", tmp_path / label / "out", "--quiet"])
        assert rc == 1 and "non-finite" in err and k in err, err
        assert not (tmp_path / label / "out").exists()
        count("silent nonsense", f"{label} weights refused at export")
