#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what benches/gpu/run.sh needs on a GPU machine that has
# PyTorch but neither Rust nor a network (the project's lent H200 machines):
#   .gpu/  yolo-time and train-time built with the `wgpu` feature, stripped and xz-compressed
#          (~65 MB each stripped, ~10 MB compressed: the carried files may take 64 MiB)
#   .gl/   the Vulkan and EGL loader packages (Debian, amd64), unpacked there by run.sh
#   .whl/  the Ultralytics wheel (pure Python; its needs are in that machine's image)
# All three are ignored by git; the device tool's `run` carries them:
#   run(command="bash benches/gpu/run.sh", carry=[".gpu", ".gl", ".whl"], timeout_s=540)
# `prepare.sh --tests` also packs the parity tests for benches/gpu/tests.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --locked -p yolo-benches --bin yolo-time --bin train-time --features wgpu
mkdir -p .gpu .gl .whl
for b in yolo-time train-time; do
    strip -o ".gpu/$b" "target/release/$b"
    xz -T0 -9 -f ".gpu/$b"
done
# With --tests: the parity tests (model outputs, train step) built for wgpu, for benches/gpu/tests.sh
# (another ~21 MB compressed: with the binaries above and the working tree, ~58 of the 64 MiB).
if [ "${1:-}" = "--tests" ]; then
    for t in "yolo-core model" "yolo-train train_step"; do
        set -- $t
        exe=$(cargo test --release --locked --features wgpu -p "$1" --test "$2" --no-run --message-format=json \
            | python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
        strip -o ".gpu/test-$2" "$exe"
        xz -T0 -6 -f ".gpu/test-$2"
    done
    pwd -P > .gpu/built_at
else
    rm -f .gpu/test-*.xz .gpu/built_at   # no stale tests beside new binaries
fi

python3 -m pip download -q --no-deps --only-binary=:all: -d .whl ultralytics==8.4.190

o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
mkdir -p /tmp/amd64/partial
apt-get "${o[@]}" update -qq
(cd .gl && apt-get "${o[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

du -sh .gpu .gl .whl
