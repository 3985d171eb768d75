"""Device profiles choose memory vs speed: a jetson-nano export's extractor turns the lean allocator on by
default (engine/allocator.py LEAN_PROFILES); other profiles keep glibc's defaults; LIGHTCL_MALLOC overrides."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")

_PROBE = r"""
import ctypes, json, sys
from lightcl.engine.extractors import load_extractor
ext = load_extractor(sys.argv[1], backend=sys.argv[2])
from lightcl.engine.allocator import malloc_state
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
big = libc.malloc(4 << 20); libc.free(big)   # raises glibc's dynamic threshold unless it is fixed
before = libc.mallinfo2().hblkhd
p = libc.malloc(1 << 20)
mapped = libc.mallinfo2().hblkhd - before >= (1 << 20)
libc.free(p)
print(json.dumps({"state": malloc_state(), "mapped": mapped}))
"""


@pytest.fixture(scope="module")
def nano_export(digits_ckpt, tmp_path_factory):
    from lightcl.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("nano") / "exp"
    export_checkpoint(digits_ckpt, out, split="layer3", profile="jetson-nano", progress=False)
    return out


def _probe(export_dir, env, backend="ort"):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LIGHTCL_MALLOC"}
    r = subprocess.run([sys.executable, "-c", _PROBE, str(export_dir), backend], capture_output=True, text=True,
                       timeout=120, env={**base, **env})
    if r.returncode != 0 and "mallinfo2" in r.stderr:
        pytest.skip("glibc < 2.33 (no mallinfo2)")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_jetson_nano_profile_is_lean_by_default(nano_export, digits_export):
    out = _probe(nano_export, {})
    assert out["state"]["lean"] is True and out["mapped"] is True, out
    assert "jetson-nano" in out["state"]["reason"]
    assert _probe(nano_export, {}, backend="auto")["state"]["lean"] is True
    # LIGHTCL_MALLOC=system wins over the profile; the default profile keeps glibc's behaviour
    sys_out = _probe(nano_export, {"LIGHTCL_MALLOC": "system"})
    assert sys_out["state"]["lean"] is False and sys_out["mapped"] is False, sys_out
    dflt = _probe(digits_export, {})
    assert dflt["state"]["lean"] is False and dflt["mapped"] is False, dflt
