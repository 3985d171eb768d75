#!/usr/bin/env bash
# Benchmark the engine on a Jetson: `lightcl bench latency` and `lightcl bench update` on an export,
# with `tegrastats` recording power, clocks, RAM and GPU load beside each of them.
#
#   scripts/jetson/bench_jetson.sh EXPORT_DIR [OUT_DIR]
#
# EXPORT_DIR: an export made with --tensorrt ON THIS JETSON (plans are tied to the GPU and the TensorRT
# version), e.g.  lightcl export CKPT --out exports/w64-layer3 --tensorrt --fp16
# OUT_DIR (default runs/jetson-<date>): latency.json, update.json, *.tegrastats.log, env.txt, summary.txt
#
# Environment: LIGHTCL_BATCHES (default "1,32"), LIGHTCL_SECONDS (default 5), LIGHTCL_STEPS (default 30),
# LIGHTCL_TEGRA_MS (tegrastats interval, default 200), LIGHTCL_BACKENDS (default "tensorrt,ort,torch").
set -euo pipefail

EXPORT="${1:?usage: $0 EXPORT_DIR [OUT_DIR]}"
OUT="${2:-runs/jetson-$(date +%Y%m%d-%H%M%S)}"
BATCHES="${LIGHTCL_BATCHES:-1,32}"
SECONDS_PER="${LIGHTCL_SECONDS:-5}"
STEPS="${LIGHTCL_STEPS:-30}"
TEGRA_MS="${LIGHTCL_TEGRA_MS:-200}"
BACKENDS="${LIGHTCL_BACKENDS:-tensorrt,ort,torch}"
mkdir -p "$OUT"

command -v lightcl >/dev/null || { echo "lightcl is not on PATH (activate the venv: see scripts/jetson/README.md)" >&2; exit 2; }
[ -f "$EXPORT/meta.json" ] || { echo "$EXPORT is not an export directory (no meta.json)" >&2; exit 2; }
ls "$EXPORT"/*.plan >/dev/null 2>&1 || echo "warning: $EXPORT has no TensorRT plan; the tensorrt backend will be reported as failed" >&2

TEGRA=""
if command -v tegrastats >/dev/null; then
  TEGRA="tegrastats"
  [ "$(id -u)" = 0 ] || { sudo -n true 2>/dev/null && TEGRA="sudo -n tegrastats"; }
else
  echo "warning: tegrastats not found (not a Jetson?): running without it" >&2
fi

TPID=""
start_tegra() {  # $1 = log file
  [ -n "$TEGRA" ] || return 0
  $TEGRA --interval "$TEGRA_MS" --logfile "$1" &
  TPID=$!
  sleep 1  # one sample of the idle board before the benchmark starts
}
stop_tegra() {
  [ -n "$TPID" ] || return 0
  kill "$TPID" 2>/dev/null || true
  $TEGRA --stop >/dev/null 2>&1 || true
  wait "$TPID" 2>/dev/null || true
  TPID=""
}
trap stop_tegra EXIT

{
  date -Is
  cat /etc/nv_tegra_release 2>/dev/null || true
  dpkg-query -W -f='${Package} ${Version}\n' nvidia-jetpack nvidia-l4t-core tensorrt 2>/dev/null || true
  command -v nvpmodel >/dev/null && nvpmodel -q 2>/dev/null || true
  lightcl info 2>&1 || true
} > "$OUT/env.txt"

echo "== bench latency ($BACKENDS; batches $BATCHES) -> $OUT/latency.json"
start_tegra "$OUT/latency.tegrastats.log"
set +e
lightcl bench latency "$EXPORT" --backend "$BACKENDS" --batch "$BATCHES" --seconds "$SECONDS_PER" \
  --device cuda --json "$OUT/latency.json" | tee "$OUT/latency.txt"
LAT_RC=${PIPESTATUS[0]}
set -e
stop_tegra

echo "== bench update ($STEPS steps per mode) -> $OUT/update.json"
start_tegra "$OUT/update.tegrastats.log"
set +e
lightcl bench update "$EXPORT" --steps "$STEPS" --json "$OUT/update.json" | tee "$OUT/update.txt"
UPD_RC=${PIPESTATUS[0]}
set -e
stop_tegra

summarise() {  # mean / max of RAM used (MB) and total board power (mW, first *_IN or VDD_IN field)
  [ -f "$1" ] || { echo "no tegrastats log"; return; }
  awk '
    { if (match($0, /RAM [0-9]+\/[0-9]+MB/)) { split(substr($0, RSTART + 4, RLENGTH - 6), a, "/"); r = a[1] + 0;
        rs += r; if (r > rm) rm = r; n++ }
      if (match($0, /(VDD_IN|POM_5V_IN) [0-9]+/)) { s = substr($0, RSTART, RLENGTH); sub(/^[A-Z_0-9]+ /, "", s);
        p = s + 0; ps += p; if (p > pm) pm = p; np++ } }
    END { if (n) printf "RAM used MB: mean %.0f, max %.0f (%d samples)", rs / n, rm, n; else printf "no RAM samples";
          if (np) printf "; board power mW: mean %.0f, max %.0f\n", ps / np, pm; else printf "\n" }' "$1"
}
{
  echo "latency: exit $LAT_RC; $(summarise "$OUT/latency.tegrastats.log")"
  echo "update:  exit $UPD_RC; $(summarise "$OUT/update.tegrastats.log")"
} | tee "$OUT/summary.txt"
echo "wrote $OUT"
[ "$LAT_RC" = 0 ] && [ "$UPD_RC" = 0 ]
