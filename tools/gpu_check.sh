#!/usr/bin/env bash
# The GPU checks of issue 20 in one command, for one short device lease (docs/benchmarks.md,
# "GPU"): the GPU tests, then the benchmarks on CUDA. Each stage runs under its own time limit,
# so the stages that finished still leave their results when a later one runs long.
#
#   OUT=/some/dir bash tools/gpu_check.sh        # results in $OUT (default docs/bench/gpu)
#
# Written for a bare GPU machine whose python3 already holds torch, timm and the rest: wheels
# in .whl/ (packages such a machine lacks, e.g. albumentations) are installed first if needed.
# Settings are environment variables (defaults: resnet50-FPN, 288x384, bf16 auto); a CPU dry run:
#   DEVICE=cpu PY=.venv/bin/python BACKBONE=resnet18 CROP=[64,96] BATCH=2 BATCHES=[2,4] \
#     ITERS=2 WARMUP=1 COUNT=12 CACHE_BATCH=2 SIZE="96 128" WORKERS=1 OUT=/tmp/gpu_check \
#     bash tools/gpu_check.sh
set -uo pipefail

OUT=${OUT:-docs/bench/gpu}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
BACKBONE=${BACKBONE:-resnet50}
CROP=${CROP:-[288,384]}
BATCH=${BATCH:-64}                 # the compiled runs' batch
BATCHES=${BATCHES:-[16,32,64,128]} # the eager batch sweep
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}                # untimed steps: compilation and graph capture happen here
SIZE=${SIZE:-480 640}              # source images of the data-pipeline comparison (NYUv2 size)
COUNT=${COUNT:-96}                 # >= (4 + 2 warm-up) batches of CACHE_BATCH
CACHE_BATCH=${CACHE_BATCH:-16}
WORKERS=${WORKERS:-16}

mkdir -p "$OUT"
LOG="$OUT/log.txt"
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
if ! "$PY" -c "import albumentations" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/cvmtl_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/cvmtl_site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

# stage NAME SECONDS COMMAND...: run it under a time limit, its output appended to the log
stage() {
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    echo "== $name: exit $?" | tee -a "$LOG"
}

MODEL=(--device "$DEVICE" --config synthetic_demo "model.backbone=$BACKBONE" "data.crop=$CROP")
"$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available() and \
torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"

stage tests 140 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
stage sweep 70 "$PY" tools/benchmark.py "${MODEL[@]}" --sweep --no-eval --iters 10 --warmup 3 \
    --grid "train.batch_size=$BATCHES" --table "$OUT/sweep.md" --json "$OUT/sweep.json"
# eager (its evaluation too) against train.compile=true; then the CUDA-graph mode against eager
stage compile 120 "$PY" tools/benchmark.py "${MODEL[@]}" "train.batch_size=$BATCH" \
    train.compile=false --compare-with train.compile=true --iters "$ITERS" --warmup "$WARMUP" \
    --no-phases --json "$OUT/compile.json"
stage graphs 120 "$PY" tools/benchmark.py "${MODEL[@]}" "train.batch_size=$BATCH" \
    train.compile=reduce-overhead --compare-with train.compile=false --iters "$ITERS" \
    --warmup "$WARMUP" --no-phases --json "$OUT/graphs.json"
# shellcheck disable=SC2086  # SIZE is two numbers
stage cache 80 bash -c "'$PY' -m cvmtl.workflows.bench.data --size $SIZE --count $COUNT \
    --rounds 2 --batches 4 data.crop=$CROP train.batch_size=$CACHE_BATCH \
    data.num_workers=$WORKERS train.device=$DEVICE --modes none device >'$OUT/cache.json'"
ls -la "$OUT" | tee -a "$LOG"
