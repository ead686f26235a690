#!/usr/bin/env bash
# Every benchmark of issue 17 on a CUDA GPU in one go, gathered in bench/results_gpu.md:
#
#   1. the network bench           python -m bench.networks --device cuda (full: 96^3 windows, real sliding window)
#   2. the fast-inference bench    the demo's trained lung bundle (python -m pipelines demo, trained on the GPU) through
#                                  every BundleInferer variant, and the shipped E-DU's forward per precision and layout
#   3. the whole-CT bench          python -m bench.ct_volume --device cuda (512 x 512 x 300, six configurations)
#   4. one epoch of each segmentation bundle (lung, BraTS, ISIC) through python -m monai.bundle run training, AMP on,
#                                  validation by the planned sliding window on the GPU (python -m bench.gpu train)
#
#   bench/gpu.sh                   run from anywhere; PYTHON=... picks the interpreter (default .venv/bin/python)
#   GPU_OUT=dir GPU_WORK=dir CT_MINUTES=5 GPU_DATA_SIZE=small|full GPU_CASES=8 bench/gpu.sh
#
# Without a CUDA device it prints one line and exits 1 before anything runs. Each step's output goes to a log in
# GPU_WORK; a failed step is recorded in the table and the others still run; the exit code is 1 if any failed.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' >/dev/null 2>&1
case $? in
    0) ;;
    3) echo "bench/gpu.sh: no CUDA device (torch.cuda.is_available() is False for $PY); nothing was run" >&2
       exit 1 ;;
    *) echo "bench/gpu.sh: $PY cannot import torch (run make venv, or set PYTHON=...); nothing was run" >&2
       exit 1 ;;
esac

cd "$ROOT" || exit 1
OUT=${GPU_OUT:-$ROOT/bench/results_gpu}
WORK=${GPU_WORK:-$(mktemp -d /tmp/gpu_bench.XXXXXX)}
mkdir -p "$OUT" "$WORK"
: > "$OUT/steps.tsv"
export PYTHONWARNINGS=ignore PIPELINES_QUIET=1
failed=0

step() {  # step NAME COMMAND...: run it, log to $WORK/NAME.log, record exit code and seconds
    local name=$1 start rc
    shift
    echo "bench/gpu.sh: $name (log $WORK/$name.log)" >&2
    start=$(date +%s)
    "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" >> "$OUT/steps.tsv"
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "bench/gpu.sh: $name failed (exit $rc); last lines of $WORK/$name.log:" >&2
        tail -n 5 "$WORK/$name.log" >&2
    fi
}

"$PY" -m bench.gpu machine --out "$OUT" || exit 1
step networks "$PY" -W ignore -m bench.networks --device cuda --out "$OUT"
step demo "$PY" -W ignore -m pipelines demo --workdir "$WORK/demo_run"
step fast_inference "$PY" -W ignore -m bench.gpu fast-inference --out "$OUT" \
    --bundle "$WORK/demo_run/lung_nodule_ct_edu_segmentation" --data "$WORK/demo_run/data/LUNA16-test"
step ct_volume "$PY" -W ignore -m bench.ct_volume --device cuda --threads "$(nproc)" \
    --max-minutes "${CT_MINUTES:-5}" --out "$OUT" --work "$WORK"
step training "$PY" -W ignore -m bench.gpu train --work "$WORK" --out "$OUT" \
    --size "${GPU_DATA_SIZE:-small}" --cases "${GPU_CASES:-8}"
"$PY" -m bench.gpu report --out "$OUT" --md "$ROOT/bench/results_gpu.md" > /dev/null || failed=1
echo "bench/gpu.sh: wrote $ROOT/bench/results_gpu.md (step results in $OUT, logs in $WORK)" >&2
exit "$failed"
