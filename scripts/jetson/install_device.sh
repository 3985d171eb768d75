#!/usr/bin/env bash
# Install lightcl's DEVICE side (engine, `lightcl predict`, examples/robot_loop.py) into a venv that keeps
# the board's own torch and TensorRT: lightcl goes in with --no-deps, its device dependencies by hand.
# Not run on a Jetson by us (run here on x86 only with a local CPU torch wheel); see scripts/jetson/README.md.
#
#   scripts/jetson/install_device.sh [VENV]          (default ~/lightcl-venv)
#
# Where torch / onnxruntime come from (first that applies):
#   TORCH_INDEX=URL   pip index holding both torch and onnxruntime-gpu (JetPack 6: the jetson-ai-lab index)
#   TORCH_WHEEL=FILE  NVIDIA's torch wheel for this JetPack (JetPack 5), ORT_WHEEL=FILE an onnxruntime-gpu wheel
#   neither           the torch the system Python already has (community Nano images), onnxruntime (CPU) from PyPI
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$HOME/lightcl-venv}"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 8))' \
  || { echo "lightcl's device side needs Python >= 3.8; $PY is $("$PY" -V 2>&1) (see scripts/jetson/README.md)" >&2; exit 2; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv --system-site-packages "$VENV"   # sees JetPack's tensorrt bindings
PIP=("$VENV/bin/python" -m pip install)
if [ -n "${TORCH_INDEX:-}" ]; then
  "${PIP[@]}" torch onnxruntime-gpu --index-url "$TORCH_INDEX"
else
  [ -z "${TORCH_WHEEL:-}" ] || "${PIP[@]}" "$TORCH_WHEEL"
  "$VENV/bin/python" -c "import torch" 2>/dev/null \
    || { echo "no torch in $VENV or the system Python: set TORCH_WHEEL to NVIDIA's wheel for this JetPack" >&2; exit 2; }
  if [ -n "${ORT_WHEEL:-}" ]; then "${PIP[@]}" "$ORT_WHEEL"; else "${PIP[@]}" "onnxruntime>=1.14"; fi
fi
"${PIP[@]}" "numpy>=1.21,<2" "safetensors>=0.3.1" tqdm psutil pillow
"${PIP[@]}" --no-deps "$ROOT"
cd /  # not from a checkout: its lightcl/ folder would shadow the installed package
"$VENV/bin/python" - <<'PY'
import sys
import numpy, torch
try:
    import onnxruntime as ort
    ort_v, providers = ort.__version__, ort.get_available_providers()
except ImportError:
    ort_v, providers = None, []
try:
    import tensorrt
    trt_v = tensorrt.__version__
except ImportError:
    trt_v = None
import lightcl.engine.learner  # noqa: F401  the device side imports
from lightcl.engine.preprocess import ImagePreprocess  # noqa: F401

def ver(s):
    return tuple(int(p) for p in s.split("+")[0].split(".")[:2] if p.isdigit())

print(f"python {sys.version.split()[0]}, torch {torch.__version__} (cuda {torch.cuda.is_available()}), "
      f"onnxruntime {ort_v} {providers}, tensorrt {trt_v}, numpy {numpy.__version__}")
bad = [w for w, ok in (("torch >= 1.13", ver(torch.__version__) >= (1, 13)),
                       ("numpy < 2", ver(numpy.__version__) < (2, 0)),
                       ("onnxruntime >= 1.14 (or tensorrt)", (ort_v and ver(ort_v) >= (1, 14)) or trt_v)) if not ok]
if bad:
    sys.exit("below the device floor: " + ", ".join(bad))
print("lightcl device side installed")
PY
echo "activate with: . $VENV/bin/activate" >&2
