#!/usr/bin/env bash
# Runs the parity tests (yolo-core's `model` and `val`, yolo-train's `train_step`) on a lent GPU machine,
# once per backend given (default: those in .gpu-tests/features, e.g. `wgpu,cuda`), from the
# binaries `benches/gpu/prepare.sh --tests` packed into .gpu-tests:
#   run(command="YOLO_RS_TEST_S=70 bash benches/gpu/tests.sh", carry=[".gpu-tests", ".gl"], timeout_s=300)
# Each test checks the CPU and then the default device (BURN_DEVICE=<backend>: the GPU).
# Every backend runs even when another fails; the exit status says whether all passed.
# YOLO_RS_TEST_S bounds each test binary's run (default 150 s).
set -uo pipefail
source "$(dirname "$0")/env.sh" || exit 1
if [ ! -f .gpu-tests/built_at ]; then
    echo "tests.sh: no test binaries were carried (run \`benches/gpu/prepare.sh --tests\` and carry .gpu-tests)" >&2
    exit 1
fi
built_at=$(cat .gpu-tests/built_at)
if [ ! -d "$built_at" ] || [ -L "$built_at" ]; then
    mkdir -p "$(dirname "$built_at")" && ln -sfn "$PWD" "$built_at" || exit 1
fi
backends=("$@")
if [ ${#backends[@]} -eq 0 ]; then  # cuda first: it is the one never run yet
    f=",$(cat .gpu-tests/features),"
    for b in cuda wgpu; do case "$f" in *",$b,"*) backends+=("$b") ;; esac; done
fi
limit=${YOLO_RS_TEST_S:-150}  # seconds per test binary: a hung run must not take the others'
status=0
for b in "${backends[@]}"; do
    for t in model train_step val; do
        echo "== $t on $b"
        start=$(date +%s)
        # --foreground: stay in the caller's process group, so that a caller's own timeout
        # (check.sh's phases) stops the test too instead of leaving it on the GPU.
        BURN_DEVICE=$b timeout --foreground -k 5 "$limit" "$bin/test-$t" --test-threads 4 2>&1 | tee "$out/tests-$b-$t.log"
        rc=${PIPESTATUS[0]}
        echo "== $t on $b: exit $rc in $(( $(date +%s) - start )) s" | tee -a "$out/tests-summary.txt"
        [ "$rc" -eq 0 ] || status=1
    done
done
exit "$status"
