#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what benches/gpu/run.sh, tests.sh and check.sh need on a GPU
# machine that has PyTorch but neither Rust nor a network (the project's lent H100/H200 machines):
#   .gpu/        yolo-time and train-time built with the GPU features (default `wgpu,cuda`: one
#                binary runs either backend, `BURN_DEVICE` picks), stripped, in one tar.xz
#   .gpu-epochs/ with --epochs: yolo-train (same build), for check.sh's `epochs` phase in a
#                call of its own (28 MB packed; beside .gpu it would leave no margin)
#   .gpu-tests/  with --tests: the parity tests (yolo-core `model` and `val`, yolo-train
#                `train_step`)
#   .gl/   the Vulkan and EGL loader packages (Debian, amd64), unpacked there by env.sh (wgpu)
#   .whl/  the Ultralytics wheel (pure Python; its needs are in that machine's image)
# All are ignored by git; the device tool's `run` carries them, at most 64 MiB with the working
# tree per call, so the tests go in a call of their own (the machine stays warm between calls):
#   run(command="YOLO_RS_TEST_S=70 bash benches/gpu/tests.sh", carry=[".gpu-tests", ".gl"], timeout_s=300)
#   run(command="YOLO_RS_CHECK_S=380 bash benches/gpu/check.sh", carry=[".gpu", ".gl", ".whl"], timeout_s=420)
# YOLO_RS_GPU_FEATURES=wgpu builds without CUDA (smaller; no LLVM needed).
# The `cuda` feature links LLVM: offline, tools/cuda-llvm.sh provides Debian's LLVM 22 (run here).
set -euo pipefail
cd "$(dirname "$0")/../.."
features="${YOLO_RS_GPU_FEATURES:-wgpu,cuda}"
case ",$features," in *,cuda,*) bash tools/cuda-llvm.sh ;; esac

# One xz stream per folder, single-threaded with a 512 MiB dictionary: the binaries share most
# of their bytes (Burn, CubeCL, wgpu and, with `cuda`, ~80 MB of LLVM), which a dictionary that
# spans them stores once (two `wgpu,cuda` binaries: 147 MB stripped each, 27 MB compressed
# alone, 35 MB together). Unpacking needs 512 MiB of memory.
pack() {  # pack FOLDER FILE...: strips the files into FOLDER/bin.tar.xz
    local dir=$1 tmp; shift
    tmp=$(mktemp -d)
    for f in "$@"; do strip -o "$tmp/$(basename "$f")" "$f"; done
    rm -rf "$dir" && mkdir -p "$dir"
    tar -C "$tmp" -cf - . | xz -T1 --lzma2=preset=6,dict=512MiB > "$dir/bin.tar.xz"
    rm -rf "$tmp"
    echo "$features" > "$dir/features"
}

# One cargo invocation for the binaries and the tests, so that they share one feature set and
# one build of Burn's GPU stack (three invocations built it three times, ~15 min each here).
cargo_features=$(echo "$features" | tr ',' '\n' | sed 's#.*#yolo-core/&,yolo-train/&,yolo-benches/&#' | paste -sd,)
cargo test --release --locked --no-run --features "$cargo_features" -p yolo-core -p yolo-train -p yolo-benches \
    --test model --test train_step --test val --test yolo_bench --message-format=json-render-diagnostics > /tmp/yolo-rs-gpu-build.json
test_exe() {  # test_exe NAME: the path of integration test NAME's executable
    python3 -c 'import json, sys
for l in open(sys.argv[1]):
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"] \
            and m["target"]["name"] == sys.argv[2]:
        print(m["executable"])' /tmp/yolo-rs-gpu-build.json "$1"
}
pack .gpu target/release/yolo-time target/release/train-time
# With --epochs: yolo-train, built by the same invocation (integration tests get their package's
# binaries), in a carry of its own.
if [[ " $* " == *" --epochs "* ]]; then
    pack .gpu-epochs target/release/yolo-train
else
    rm -rf .gpu-epochs
fi
# With --tests: the parity tests (model outputs, train step) in .gpu-tests, a second carry (with
# the binaries above both exceed the 64 MiB of one call).
if [[ " $* " == *" --tests "* ]]; then
    for t in model train_step val; do cp "$(test_exe $t)" /tmp/test-$t; done
    pack .gpu-tests /tmp/test-model /tmp/test-train_step /tmp/test-val
    rm -f /tmp/test-model /tmp/test-train_step /tmp/test-val
    # The tests read their fixtures through the checkout's path on the machine they were built on.
    pwd -P > .gpu-tests/built_at
else
    rm -rf .gpu-tests   # no tests from an older build beside these binaries
fi
rm -rf .gl .whl   # no older package versions beside the new ones
mkdir -p .gl .whl

python3 -m pip download -q --no-deps --only-binary=:all: -d .whl ultralytics==8.4.190

o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
mkdir -p /tmp/amd64/partial
apt-get "${o[@]}" update -qq
(cd .gl && apt-get "${o[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

# What `run` carries: the tracked and untracked-not-ignored files plus the named folders.
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
du -sh .gpu .gpu-tests .gpu-epochs .gl .whl 2>/dev/null
status=0
for carry in ".gpu .gl .whl" ".gpu-tests .gl" ".gpu-epochs .gl"; do
    [ -d "${carry%% *}" ] || continue
    total=$(( (tree + $(du -cb $carry | tail -1 | cut -f1)) / 1048576 ))
    echo "carry [$carry]: $total MiB of 64 (working tree $(( tree / 1048576 )) MiB)"
    [ "$total" -lt 64 ] || { echo "prepare.sh: [$carry] is over the 64 MiB a device run carries" >&2; status=1; }
done
exit "$status"
