#!/usr/bin/env bash
# GPU benchmark: suites lif, gru, memory and deep on one GPU, one JSON, tables on stdout.
#
#   PYTHON=/path/to/venv/bin/python OUT=/some/dir bash benchmarks/gpu.sh
#
# Installs nothing: it needs a Python whose jax has a GPU backend (jaxlib with CUDA) and
# etprop's dependencies (brainstate, brainunit, numpy); braintrace is optional (its rows are
# skipped, and said so, if it does not import). Run from anywhere; it runs in the repository
# root with the checkout on PYTHONPATH, so etprop need not be installed.
#
# Writes ${OUT:-.}/gpu_results.json (rewritten after every configuration, so a run cut short
# keeps what finished) and ${OUT:-.}/gpu_results.log. Expected run time on one H100/H200:
# about 6-8 minutes (an estimate: mostly tracing and XLA compiles, ~8 contenders x 7
# configurations, plus 36 + 6 device-peak probes, 8 processes at a time); the whole run is
# capped at ${LIMIT_S:-540} s.
set -euo pipefail

PY=${PYTHON:-python}
OUT_DIR=${OUT:-.}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"

if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu.sh: no Python at PYTHON=$PY (set PYTHON to a venv's python with a GPU build of jax)" >&2
    exit 2
fi
if ! "$PY" - <<'EOF'
import sys
try:
    import jax
except Exception as e:
    sys.exit(f"gpu.sh: cannot import jax: {type(e).__name__}: {e}")
try:
    devs = jax.devices("gpu")
except RuntimeError as e:
    sys.exit(f"gpu.sh: jax {jax.__version__} has no GPU backend here ({e}); default backend "
             f"{jax.default_backend()}. Needs a CUDA build of jaxlib, e.g. jax[cuda12].")
import etprop, brainstate  # noqa: F401  (fail here, clearly, if the checkout's deps are missing)
print(f"gpu.sh: jax {jax.__version__}, {len(devs)} GPU(s): {devs[0].device_kind}")
EOF
then
    exit 2
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# the main process takes at most half the GPU up front; the device-peak probes (fresh
# processes, PREALLOCATE=false) use the rest
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}

# deep first (the GPU-only suite), so that a run cut short still has it. --no-mem: no second
# (AOT) compile per contender in the timing suites (the memory suite and deep's device-peak
# probes measure memory); --budget-s 10: at most ~10 s of timed sequences per contender and
# configuration (fewer repeats beyond it, reported per row); --max-seq-s 10: braintrace's
# D-RTRL is skipped (and said so) where a 16-step probe estimates more than 10 s per sequence.
set +e
timeout --signal=INT "${LIMIT_S:-540}" \
    "$PY" -u -m benchmarks.run --suite deep lif memory gru --device gpu --no-mem --budget-s 10 --max-seq-s 10 --repeats 5 \
    --peak-procs "${PEAK_PROCS:-8}" --out "$OUT_DIR/gpu_results.json" 2>&1 | tee "$OUT_DIR/gpu_results.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
    echo "gpu.sh: benchmark exited with $rc (124/130: hit the ${LIMIT_S:-540} s cap); partial results in $OUT_DIR/gpu_results.json" >&2
fi
exit "$rc"
