#!/usr/bin/env bash
# GPU benchmark: a 30-second smoke test, then the dense suites and the scale suite on one GPU,
# one result file per suite, tables on stdout.
#
#   PYTHON=/path/to/venv/bin/python OUT=/some/dir bash benchmarks/gpu.sh
#
# Installs nothing: it needs a Python whose jax has a GPU backend (jaxlib with CUDA) and
# etprop's dependencies (brainstate, brainunit, numpy; a GPU machine that reaches no package
# registry gets them as wheels); braintrace is optional (its rows are skipped, and said so, if
# it does not import). Runs in the repository root with the checkout on PYTHONPATH, so etprop
# need not be installed.
#
# 1. `python -m benchmarks.gpu_smoke`: import, compile, gradient (D-RTRL = BPTT where exact; the
#    sparse network's ES-D-RTRL close to BPTT); it also shows that etprop's compiler reads this
#    jax's jaxprs (jax 0.11 reshaped them). A failure stops the script (exit 1).
# 2. the suites ${SUITES:-lif gru scale}, each writing ${OUT:-.}/gpu_<suite>.json (rewritten after
#    every configuration, so a run cut short keeps what finished) and gpu_<suite>.log; all suites
#    together are capped at ${LIMIT_S:-300} s (the suite running at the cap is cut, the rest skipped).
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

timeout 120 "$PY" -u -m benchmarks.gpu_smoke --device gpu 2>&1 | tee "$OUT_DIR/gpu_smoke.log"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    echo "gpu.sh: the smoke test failed (see $OUT_DIR/gpu_smoke.log); no benchmark run" >&2
    exit 1
fi

# --no-mem: no second (AOT) compile per contender; --budget-s 10: at most ~10 s of timed
# sequences per contender and configuration (fewer repeats beyond it, reported per row);
# --max-seq-s 10: braintrace's D-RTRL is skipped (and said so) where a 16-step probe estimates
# more than 10 s per sequence.
deadline=$(( $(date +%s) + ${LIMIT_S:-300} ))
rc=0
for suite in ${SUITES:-lif gru scale}; do
    left=$(( deadline - $(date +%s) ))
    if [ "$left" -le 5 ]; then
        echo "gpu.sh: no time left for suite $suite (cap ${LIMIT_S:-300} s)" >&2
        rc=124
        continue
    fi
    set +e
    timeout --signal=INT "$left" "$PY" -u -m benchmarks.run --suite "$suite" --device gpu --no-mem --budget-s 10 \
        --max-seq-s 10 --repeats 5 --out "$OUT_DIR/gpu_$suite.json" 2>&1 | tee "$OUT_DIR/gpu_$suite.log"
    src=${PIPESTATUS[0]}
    set -e
    if [ "$src" -ne 0 ]; then
        echo "gpu.sh: suite $suite exited with $src (124/130: cut at the cap); partial results in $OUT_DIR/gpu_$suite.json" >&2
        rc=$src
    fi
done
exit "$rc"
