#!/usr/bin/env bash
# Runs benches/gpu_compare.py on a lent GPU machine with what benches/gpu/prepare.sh put in
# .gpu, .gl and .whl (carried there). Arguments go to gpu_compare.py; the log goes to $OUT.
#   run(command="bash benches/gpu/run.sh", carry=[".gpu", ".gl", ".whl"], timeout_s=540)
set -uo pipefail
source "$(dirname "$0")/env.sh" || exit 1

{ nvidia-smi -L; nproc; } 2>&1 | tee "$out/machine.txt"
python3 benches/gpu_compare.py --exe-dir "$bin" "$@" 2>&1 | tee "$out/gpu_compare.log"
exit "${PIPESTATUS[0]}"
