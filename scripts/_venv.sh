# Sourced by scripts/demo and scripts/test: create or reuse .venv, torch first, then the project.
# Usage: . scripts/_venv.sh "EXTRAS"   (e.g. "ort,bench,test")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LIGHTCL_VENV:-$ROOT/.venv}"
EXTRAS="${1:-ort,bench}"
PY="${PYTHON:-python3}"
# Which torch to install first. Default: the CPU build pinned for this project; on a CUDA machine set
# LIGHTCL_TORCH_SPEC="torch" (and LIGHTCL_TORCH_INDEX to PyTorch's CUDA index) — see README.
TORCH_SPEC="${LIGHTCL_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[lightcl] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.lightcl-installed"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $EXTRAS $TORCH_SPEC"
if [ ! -f "$STAMP" ] || ! grep -qxF -- "$WANT" "$STAMP"; then
  t0=$(date +%s)
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "[lightcl] installing $TORCH_SPEC (before the project, so pip does not pull a CUDA build)" >&2
    if [ -n "${LIGHTCL_TORCH_INDEX:-}" ]; then
      "$VENV/bin/pip" install -q --index-url "$LIGHTCL_TORCH_INDEX" "$TORCH_SPEC"
    else
      "$VENV/bin/pip" install -q "$TORCH_SPEC"
    fi
  fi
  echo "[lightcl] installing lightcl[$EXTRAS]" >&2
  "$VENV/bin/pip" install -q -e "$ROOT[$EXTRAS]" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  "$VENV/bin/python" -c "import lightcl.engine, lightcl.data, lightcl.export, lightcl.bench"
  echo "$WANT" >> "$STAMP"
  echo "[lightcl] install took $(( $(date +%s) - t0 )) s" >&2
fi
export PATH="$VENV/bin:$PATH"
