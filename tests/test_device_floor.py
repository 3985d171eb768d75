"""The device floor: engine/, `lightcl predict` and the robot example on Python 3.8 / torch 1.13.

Two halves:
* static: vermin says the device files need no Python newer than 3.8, and every file whose
  annotations use ``X | Y`` or ``list[int]`` defers them (``from __future__ import annotations``),
  which vermin does not check;
* run: the device path learns, saves, reloads and predicts, and imports none of the host packages
  (``lightcl.bench``, ``lightcl.export``, onnx, onnxscript, sklearn). ``scripts/test-floor`` runs this
  file in a venv with the oldest torch / onnxruntime / numpy this machine installs, on assets made by
  the host venv (``build_assets``), see docs/device-floor.md.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the device side: what runs on a Jetson (the package face and the CLI that `lightcl predict` goes through)
DEVICE_FILES = sorted(
    [p for p in (ROOT / "engine").rglob("*.py")]
    + [ROOT / f for f in ("lightcl/__init__.py", "lightcl/__main__.py", "lightcl/cli.py", "lightcl/commands/__init__.py",
                          "lightcl/commands/predict.py", "lightcl/commands/_args.py", "lightcl/commands/_safety.py",
                          "examples/robot_loop.py", "data/__init__.py", "data/errors.py")])
MIN_PYTHON = "3.8"
HOST_MODULES = ("lightcl.bench", "lightcl.export", "onnx", "onnxscript", "sklearn", "mlxtend")

# Runs a device-path script (then its arguments) and, however it exits, writes which host modules got
# imported to $LIGHTCL_HOST_MODULES_OUT. (Blocking the imports instead would break torch, which probes
# for onnx with importlib.util.find_spec.) The floor venv has none of them installed at all.
GUARD = r'''
import atexit, json, os, runpy, sys
HOST = %r
def report():
    loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HOST))
    with open(os.environ["LIGHTCL_HOST_MODULES_OUT"], "w") as f:
        json.dump(loaded, f)
atexit.register(report)
target = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(target, run_name="__main__")
''' % (HOST_MODULES,)


# --------------------------------------------------------------------------- static
def test_device_files_need_no_python_newer_than_38():
    """vermin (static minimum-version analysis) over every device file; the test extra installs it."""
    vermin = shutil.which("vermin") or (str(Path(sys.executable).with_name("vermin"))
                                        if Path(sys.executable).with_name("vermin").exists() else None)
    if vermin is None:
        pytest.skip("vermin not installed (pip install vermin, or the test extra)")
    r = subprocess.run([vermin, f"-t={MIN_PYTHON}-", "--violations", "--no-tips", "--no-parse-comments",
                        *map(str, DEVICE_FILES)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Analyzing {len(DEVICE_FILES)} files" in r.stdout + r.stderr or len(DEVICE_FILES) > 10


_GENERIC = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _new_style_annotations(tree: ast.AST) -> list[int]:
    anns = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = n.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None and arg.annotation is not None:
                    anns.append(arg.annotation)
            if n.returns is not None:
                anns.append(n.returns)
        elif isinstance(n, ast.AnnAssign):
            anns.append(n.annotation)
    lines = []
    for a in anns:
        for m in ast.walk(a):
            if (isinstance(m, ast.BinOp) and isinstance(m.op, ast.BitOr)) or \
                    (isinstance(m, ast.Subscript) and isinstance(m.value, ast.Name) and m.value.id in _GENERIC):
                lines.append(a.lineno)
                break
    return lines


def test_new_style_annotations_are_deferred_in_device_files():
    """``int | None`` / ``list[int]`` annotations are evaluated at definition time on 3.8 unless deferred."""
    bad = []
    for p in DEVICE_FILES:
        tree = ast.parse(p.read_text(), str(p))
        future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                     and any(a.name == "annotations" for a in n.names) for n in tree.body)
        lines = _new_style_annotations(tree)
        if lines and not future:
            bad.append(f"{p.relative_to(ROOT)}:{lines[0]}")
    assert not bad, f"new-style annotations without `from __future__ import annotations`: {bad}"


def test_the_check_catches_what_38_cannot_run(tmp_path):
    """The two checks above can fail: a 3.9+ API and an undeferred ``int | None`` are both caught."""
    assert _new_style_annotations(ast.parse("def f(x: int | None) -> list[int]: ...")) == [1, 1]
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(vermin).exists():
        pytest.skip("vermin not installed")
    bad = tmp_path / "bad.py"
    bad.write_text("import functools\n@functools.cache\ndef f(s: str):\n    return s.removeprefix('x')\n")
    r = subprocess.run([vermin, "-t=3.8-", "--violations", "--no-tips", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "3.9" in r.stdout


# --------------------------------------------------------------------------- assets
def build_assets(out: Path, export_dir: Path | None = None, profile: str = "jetson-nano") -> Path:
    """Host side: an export (width-16 ResNet-18 on digits), labelled frames as .npz, a few PNG files.

    ``scripts/test-floor`` calls this with the host venv; the floor venv then only reads the result. The
    export uses the ``jetson-nano`` profile (opset 13, ONNX IR version 7 from the legacy exporter): the
    default profile's opset-18 / IR-10 graph is beyond onnxruntime 1.15 (IR <= 9), the kind of
    onnxruntime a Jetson at the floor has."""
    import numpy as np
    from PIL import Image

    from lightcl.data.datasets import load_dataset

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if export_dir is None:
        from lightcl.export.onnx_export import export_checkpoint
        from lightcl.export.pretrain import pretrain

        ckpt = out / "ckpt" / "digits16"
        pretrain("digits", ckpt, arch="resnet18", width=16, epochs=3, seed=0, progress=False)
        export_dir = out / "ckpt" / "digits16-layer3"
        export_checkpoint(ckpt, export_dir, split="layer3", profile=profile, progress=False)
    if (out / "export").exists():
        shutil.rmtree(out / "export")
    shutil.copytree(export_dir, out / "export")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    keep_tr, keep_te = np.isin(train.y, range(6)), np.isin(test.y, range(6))  # the robot's three lessons
    np.savez(out / "frames.npz", train_x=train.x[keep_tr], train_y=train.y[keep_tr], test_x=test.x[keep_te],
             test_y=test.y[keep_te])
    img = out / "images"
    img.mkdir(exist_ok=True)
    idx = np.flatnonzero(np.isin(test.y, [0, 1, 2, 3]))[:12]  # classes the predict test learns
    labels = {}
    for k, i in enumerate(idx):
        name = f"{k:02d}.png"
        Image.fromarray(test.x[i][..., 0] if test.x.shape[-1] == 1 else test.x[i]).save(img / name)
        labels[name] = int(test.y[i])
    (out / "labels.json").write_text(json.dumps(labels))
    return out


@pytest.fixture(scope="module")
def assets(request, tmp_path_factory) -> Path:
    given = os.environ.get("LIGHTCL_FLOOR_ASSETS")
    if given:
        return Path(given)
    pytest.importorskip("sklearn")
    return build_assets(tmp_path_factory.mktemp("floor"), request.getfixturevalue("digits_export"))


def _guarded(tmp_path: Path, script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``script`` on the device path; fails the test if it imported any host module."""
    guard = tmp_path / "device_guard.py"
    guard.write_text(GUARD)
    seen = tmp_path / "host_modules.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), LIGHTCL_HOST_MODULES_OUT=str(seen))
    r = subprocess.run([sys.executable, str(guard), script, *args], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=tmp_path)
    assert json.loads(seen.read_text()) == [], f"host modules imported on the device path: {seen.read_text()}"
    return r


LEARN_AND_PREDICT = r'''
import json, sys
from pathlib import Path
import numpy as np, torch
from lightcl.engine.extractors import load_extractor
from lightcl.engine.export_dir import load_export_meta, load_head
from lightcl.engine.learner import LightCL
from lightcl.engine.preprocess import ImagePreprocess, to_tensor_uint8

assets, work = Path(sys.argv[1]), Path(sys.argv[2])
exp = assets / "export"
torch.manual_seed(0)
pre = ImagePreprocess.from_meta(load_export_meta(exp))
z = np.load(assets / "frames.npz")
tx, ty = pre(to_tensor_uint8(z["train_x"])), torch.as_tensor(z["train_y"].astype(np.int64))
vx, vy = pre(to_tensor_uint8(z["test_x"])), torch.as_tensor(z["test_y"].astype(np.int64))
out = {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}
for backend in ("torch", "ort"):
    ext = load_extractor(exp, backend=backend)
    cl = LightCL(ext, load_head(exp), num_classes=None)
    for t, classes in enumerate([[0, 1], [2, 3]]):
        sel = torch.as_tensor(np.isin(ty.numpy(), classes))
        xs, ys = tx[sel], ty[sel]
        cl.begin_task(t, classes)
        for i in range(0, len(ys), 32):  # one epoch
            cl.observe(xs[i:i + 32], ys[i:i + 32])
        cl.end_task()
    seen = torch.as_tensor(np.isin(vy.numpy(), [0, 1, 2, 3]))
    acc = float((cl.predict(vx[seen], mode="cil") == vy[seen]).float().mean())
    til = []
    for t, classes in enumerate([[0, 1], [2, 3]]):
        sel = torch.as_tensor(np.isin(vy.numpy(), classes))
        til.append(float((cl.predict(vx[sel], mode="til", task_id=t) == vy[sel]).float().mean()))
    state = work / ("state-" + backend)
    cl.save(state)
    again = LightCL.load(state, load_extractor(exp, backend=backend))
    same = bool(torch.equal(again.predict(vx, mode="cil"), cl.predict(vx, mode="cil")))
    out[backend] = {"cil": acc, "til": sum(til) / len(til), "reloaded_same": same, "provider": str(ext.info())}
import onnxruntime
out["onnxruntime"] = onnxruntime.__version__
(work / "result.json").write_text(json.dumps(out))
'''


def test_learn_save_reload_predict_without_host_code(assets, tmp_path):
    """Both backends learn two tasks, save, reload to identical predictions; `lightcl predict --images`
    works; and nothing of lightcl.bench / lightcl.export / onnx is imported on the way."""
    script = tmp_path / "device_run.py"
    script.write_text(LEARN_AND_PREDICT)
    r = _guarded(tmp_path, str(script), str(assets), str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "result.json").read_text())
    for backend in ("torch", "ort"):
        assert res[backend]["reloaded_same"], res
        # it learned: within each task (2 classes, chance 0.5) and across the 4 classes (chance 0.25). LightCL's
        # task-sliced loss never contrasts the tasks, so its CIL after two tasks sits near 0.5 (0.43-0.55 seen on
        # different machines): the floor checks learning, not that figure
        assert res[backend]["til"] > 0.85, res
        assert res[backend]["cil"] > 0.35, res
    # the real CLI, as on the board: `lightcl predict STATE --images DIR`
    r = _guarded(tmp_path, str(ROOT / "lightcl" / "__main__.py"), "predict", str(tmp_path / "state-ort"),
                 "--export", str(assets / "export"), "--images", str(assets / "images"), "--backend", "ort",
                 "--batch-size", "5", "--json", str(tmp_path / "pred.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    pred = json.loads((tmp_path / "pred.json").read_text())
    labels = json.loads((assets / "labels.json").read_text())
    got = {Path(p["input"]).name: p["label"] for p in pred["predictions"]}
    assert set(got) == set(labels) and set(got.values()) <= {0, 1, 2, 3}
    assert sum(got[k] == v for k, v in labels.items()) >= len(labels) // 2
    print(f"device path ran on python {res['python']}, torch {res['torch']}, onnxruntime {res['onnxruntime']}, "
          f"numpy {res['numpy']}; CIL after 2 tasks: torch {res['torch']['cil']:.3f}, ort {res['ort']['cil']:.3f}")


def test_robot_example_without_host_code(assets, tmp_path):
    script = str(ROOT / "examples" / "robot_loop.py")
    args = ["--export", str(assets / "export"), "--state", str(tmp_path / "robot"), "--frames-file",
            str(assets / "frames.npz"), "--backend", "ort", "--shots", "8", "--steps", "3", "--frames", "10"]
    r = _guarded(tmp_path, script, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("state saved") == 3  # lessons [0,1], [2,3], [4,5]
    assert (tmp_path / "robot" / "state.json").is_file()
    r2 = _guarded(tmp_path, script, *args)
    assert r2.returncode == 0 and "resumed: knows classes [0, 1, 2, 3, 4, 5]" in r2.stdout, r2.stdout + r2.stderr
    bad = _guarded(tmp_path, script, *args[:4], "--frames-file", str(tmp_path / "missing.npz"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "--frames-file" in bad.stderr
