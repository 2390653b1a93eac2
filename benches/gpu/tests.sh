#!/usr/bin/env bash
# Runs the parity tests (yolo-core's `model`, yolo-train's `train_step`) on a lent GPU machine's
# wgpu backend, from the binaries `benches/gpu/prepare.sh --tests` packed into .gpu:
#   run(command="bash benches/gpu/tests.sh", carry=[".gpu", ".gl", ".whl"], timeout_s=300)
# Each test checks the CPU and then the default device (BURN_DEVICE=wgpu: the GPU).
set -uo pipefail
source "$(dirname "$0")/env.sh" || exit 1
# The tests read their fixtures through the checkout's path on the machine they were built on.
built_at=$(cat .gpu/built_at)
if [ ! -d "$built_at" ] || [ -L "$built_at" ]; then
    mkdir -p "$(dirname "$built_at")" && ln -sfn "$PWD" "$built_at" || exit 1
fi
export BURN_DEVICE=wgpu
for t in model train_step; do
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' ".gpu/test-$t.xz" "$bin/test-$t" || exit 1
    chmod +x "$bin/test-$t"
    echo "== $t"
    "$bin/test-$t" --test-threads 4 || exit 1
done 2>&1 | tee "$out/tests.log"
exit "${PIPESTATUS[0]}"
