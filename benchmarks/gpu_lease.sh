#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md in one go, for a short lease of one CUDA machine:
#
#   OUT=gpu-out bash benchmarks/gpu_lease.sh          # logs and tables under $OUT
#   STEPS="mfu kernels" bash benchmarks/gpu_lease.sh   # some steps only (default: all seven, in this order)
#
# Runs from a plain checkout (PYTHONPATH, no install). Steps in order of importance, each under its own
# time limit so that a hang costs one step, not the lease; a failing step is logged and the next runs.
# The default order puts the MFU steps first; the others repeat earlier figures.
# All seven can take ~25 min at their limits; where one command may run 10 min at most, split them
# (times seen on one H100: mfu 73 s, residual 70 s, kernels 20 s; check needs more than 190 s):
#   STEPS="mfu residual check" ...   (~8 min: 30B MFU with its profile, twice, then every CUDA path)
#   then STEPS="mfu_inductor kernels" ...
#   mfu       benchmarks.mfu --profile: LLaMA-30B shape, random bf16 weights, all 60 layers, then one
#             profiled call: GPU time by kind of kernel and the wall time no kernel covered (launch gaps)
#             (plus $MFU_ARGS; falls back to 20 layers without the profile)
#   residual  the mfu step again with --fuse-residual (residual add + next norm in one kernel)
#   check     experiments/one-gpu-check.yaml: every CUDA scoring path (int8 included) against the fp32
#             reference, then graphopt report of the rows that finished
#   mfu_inductor  benchmarks.mfu through inductor, 20 of the 60 layers (compile time grows with depth)
#   kernels   benchmarks.kernels: the Triton kernels against eager (correctness and speed), no compile
#   compiled  benchmarks.kernels again with the torch.compile column
#   profile   benchmarks.mfu --profile on 20 layers with $PROFILE_ARGS (e.g. "--compiler inductor")
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=0
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS CMD...: CMD's output in $OUT/NAME.log, its tail and status on stdout
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $* (limit ${limit}s, $(date +%T))"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n "${TAIL:-12}" "$OUT/$name.log"
    echo "=== $name: exit $rc at $(date +%T)"
    return $rc
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
    torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, 'SMs')"
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

for s in ${STEPS:-mfu residual check mfu_inductor kernels compiled profile}; do
    case $s in
    mfu) TAIL=40 step mfu "${MFU_S:-200}" $PY -m benchmarks.mfu --profile ${MFU_ARGS:-} ||
        TAIL=6 step mfu20 120 $PY -m benchmarks.mfu --layers 20 --no-prefix-attention ;;
    kernels) TAIL=20 step kernels "${KERNELS_S:-120}" $PY -m benchmarks.kernels --device cuda --no-compile \
        --out "$OUT/kernels.csv" ${KERNELS_ARGS:-} ;;
    check) TAIL=3 step check "${CHECK_S:-330}" $PY -m graphopt run experiments/one-gpu-check.yaml \
        --no-progress --output /tmp/one-gpu-check  # killed at its limit: the finished rows are kept
        TAIL=14 step report 60 $PY -m graphopt report /tmp/one-gpu-check ;;
    compiled) TAIL=20 step compiled "${COMPILED_S:-150}" $PY -m benchmarks.kernels --device cuda --compile \
        --out "$OUT/kernels_compiled.csv" ;;
    mfu_inductor) TAIL=6 step mfu_inductor "${MFU_INDUCTOR_S:-300}" $PY -m benchmarks.mfu --layers 20 \
        --compiler inductor ;;
    profile) TAIL=40 step profile "${PROFILE_S:-240}" $PY -m benchmarks.mfu --layers 20 --repeats 1 --profile \
        ${PROFILE_ARGS:-} ;;
    residual) TAIL=40 step residual "${MFU_S:-200}" $PY -m benchmarks.mfu --profile --fuse-residual ${MFU_ARGS:-} ;;
    *) echo "unknown step $s (expected mfu, profile, residual, mfu_inductor, check, kernels, compiled)" ;;
    esac
done
exit 0
