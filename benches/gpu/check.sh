#!/usr/bin/env bash
# Issue #31's check on a lent GPU machine (nothing is built there):
#   bash benches/gpu/prepare.sh --tests [--epochs]   # here, once (~20 min: one release build, packing)
# The parity tests need their own carry (.gpu-tests; with .gpu it would exceed 64 MiB), so on
# the project's lent machines (15 min of device time in all, start-up included) two calls:
#   run(command="YOLO_RS_TEST_S=70 bash benches/gpu/tests.sh", carry=[".gpu-tests", ".gl"], timeout_s=300)
#   run(command="YOLO_RS_CHECK_S=380 bash benches/gpu/check.sh", carry=[".gpu", ".gl", ".whl"], timeout_s=420)
# Phases 1 and 3 run only with YOLO_RS_CHECK_TESTS=1 (one carry holding both folders).
# 1. the parity tests on `cuda` (LLVM 22's kernels: do they compile and match?),
# 2. gpu_compare.py: forward 640 at batch 8 and 1 and the 640 batch-16 train step against
#    PyTorch fp32 on the same GPU, for `cuda`, `cuda` with Burn's conv, and `wgpu`,
# 3. epochs.sh: the README's quick-start training run (20 epochs of the shapes demo data) on
#    the CPU and on `cuda`, mAP and loader wait side by side, if time is left,
# 4. the parity tests on `wgpu` if time is left.
# Each phase has its own time bound so one slow phase (a first fused/autotuned run compiles
# and tunes its kernels) cannot take the others' results with it; everything lands in $OUT.
# YOLO_RS_CHECK_S (default 520) is the whole script's budget in seconds; YOLO_RS_CHECK_PHASES
# (default "compare epochs") names the phases 2-3 to run. `epochs` needs yolo-train, which is
# in its own carry (prepare.sh --epochs), so it is a third call where device time is left:
#   run(command="YOLO_RS_CHECK_PHASES=epochs YOLO_RS_CHECK_S=220 bash benches/gpu/check.sh", carry=[".gpu-epochs", ".gl"], timeout_s=240)
# `amp` (the mixed precision train step against Ultralytics' AMP step and the f16 forward
# against PyTorch's half model, on cuda) is another:
#   run(command="YOLO_RS_CHECK_PHASES=amp YOLO_RS_CHECK_S=270 bash benches/gpu/check.sh", carry=[".gpu", ".gl", ".whl"], timeout_s=290)
set -uo pipefail
t0=$(date +%s)  # before unpacking: the call's time limit counts that too
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh" || exit 1
budget=${YOLO_RS_CHECK_S:-520}
status=0
left() { echo $(( budget - ($(date +%s) - t0) )); }
{ nvidia-smi -L; nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader; nproc
  cat .gpu/features 2>/dev/null; python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'; } \
    > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

phase() {  # phase NAME SECONDS COMMAND...: runs COMMAND bounded by SECONDS (and what is left)
    local name=$1 s=$2; shift 2
    local l; l=$(left)
    [ "$s" -gt "$l" ] && s=$l
    if [ "$s" -lt 20 ]; then echo "== $name: skipped (no time left)" | tee -a "$out/phases.txt"; return; fi
    echo "== $name (up to $s s)"
    local start; start=$(date +%s)
    timeout -k 5 "$s" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc in $(( $(date +%s) - start )) s" | tee -a "$out/phases.txt"
    [ "$rc" -eq 0 ] || status=1
}
# The parity tests here only with YOLO_RS_CHECK_TESTS=1 (a machine where one carry holds both
# folders): in the two-call flow tests.sh ran them already, and .gpu-tests, being ignored by
# git, stays on a warm machine between calls.
tests=0
[ "${YOLO_RS_CHECK_TESTS:-0}" = 1 ] && [ -f .gpu-tests/built_at ] && tests=1

[ "$tests" = 1 ] && YOLO_RS_TEST_S=65 phase tests-cuda 140 bash "$here/tests.sh" cuda
# One table: PyTorch, `cuda` (our im2col+matmul convs for training and large inference convs),
# `cuda+direct` (Burn's own conv everywhere: its implicit GEMM runs on tensor cores on CUDA) and
# `wgpu`, each beside the same PyTorch runs. Every yolo-rs run is a new process that compiles
# and tunes its kernels again (its warm-up), so one round, and the sizes #31 is judged on.
want() { [[ " ${YOLO_RS_CHECK_PHASES:-compare epochs} " == *" $1 "* ]]; }
want compare && phase compare 470 python3 benches/gpu_compare.py --exe-dir "$bin" --backend cuda cuda+direct wgpu \
    --sizes 640 --batches 8 1 --rounds 1 --iters 10 --warmup 3 --ours-timeout 150
# Half precision: Ultralytics' AMP step against `train-time --amp`, and the f16 forward
# (`--half`, Ultralytics' half=True) at batch 8 and 1, on `cuda` (the fp32 rows are the compare
# phase's; a call of its own: YOLO_RS_CHECK_PHASES=amp).
want amp && phase amp 260 python3 benches/gpu_compare.py --exe-dir "$bin" --backend cuda --sizes 640 --batches 8 1 \
    --precision fp16 --amp --amp-only \
    --rounds 1 --iters 10 --warmup 3 --ours-timeout 90
if want epochs; then
    if [ -x "$bin/yolo-train" ]; then
        phase epochs 200 bash "$here/epochs.sh" cuda flex
    else
        echo "== epochs: skipped (no yolo-train: prepare.sh --epochs, carry .gpu-epochs)" | tee -a "$out/phases.txt"
    fi
fi
[ "$tests" = 1 ] && YOLO_RS_TEST_S=35 phase tests-wgpu 80 bash "$here/tests.sh" wgpu
cat "$out/phases.txt"
exit "$status"
