#!/usr/bin/env bash
# Checks a GPU image (images/build.sh --only yolo-train-cuda | yolo-bench-cuda) on a host without
# a GPU, which is what CI-like hosts are: it runs as user 65532 with no network and no shell
# inside, its loader and glibc libraries work (yolo-train-cuda: a one-epoch training run;
# yolo-bench-cuda: the suite's smoke run, yolo-infer beside it; both chosen onto the CPU because
# no CUDA device answers), a stand-in for the driver's libcuda finds the glibc libraries it
# links, and naming the GPU (`BURN_DEVICE=cuda`) without one fails with the reason, not a panic.
# Needs a C compiler (cc) for the stand-in. Kernels on a real GPU are checked by benches/gpu/.
#
#   bash images/build.sh --only yolo-train-cuda && bash images/test-cuda.sh [--tag 0.1.0]
#   bash images/build.sh --only yolo-bench-cuda && bash images/test-cuda.sh --image yolo-bench
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=$(awk -F'"' '/^version =/ {print $2; exit}' Cargo.toml)
NAME=yolo-train
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG=$2; shift 2 ;;
        --image) NAME=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
case "$NAME" in yolo-train|yolo-bench) ;; *) echo "--image: yolo-train or yolo-bench" >&2; exit 2 ;; esac
IMG=localhost/yolo-rs/$NAME:$TAG-cuda
INFER=localhost/yolo-rs/yolo-infer:$TAG
W=$(mktemp -d)
chmod 0777 "$W"
trap 'rm -rf "$W"' EXIT
SCRIPT=images/test-cuda.sh
source images/lib.sh

check_image "$IMG" "/usr/local/bin/$NAME" "$TAG-cuda"

if [ "$NAME" = yolo-train ]; then
    # Data from the CPU yolo-infer image when it is there, else from the image's own demo set.
    if podman image exists "$INFER"; then
        run "$INFER" shapes --out /data/shapes --train 16 --val 8 --imgsz 64 >/dev/null
        DATA=/data/shapes/data.yaml
    else
        DATA=shapes
    fi
    run -w /data "$IMG" --data "$DATA" --epochs 1 --imgsz 64 --batch 8 --nbs 8 \
        --width-multiple 0.0625 --depth-multiple 0.33 --project /data/runs --name tiny \
        --results-dir /data/results 2>"$W/cpu.err" >/dev/null || { cat "$W/cpu.err" >&2; fail "training failed"; }
    grep -q '^device: flex (auto' "$W/cpu.err" || { cat "$W/cpu.err" >&2; fail "not trained on flex by auto choice"; }
    BEST=$(cat "$W/results/best")
    [ -f "$W${BEST#/data}" ] || fail "no checkpoint at $BEST"
    echo "ok: no GPU here, so the image trained one epoch on the CPU ($(grep '^device:' "$W/cpu.err"))"
    GPU_RUN=(--data "$DATA" --epochs 1 --imgsz 64 --project /data/runs --name gpu)
else
    # yolo-infer beside yolo-bench (the suite drives its `serve`) runs through the same loader.
    run --entrypoint /usr/local/bin/yolo-infer "$IMG" --version >/dev/null || fail "yolo-infer in $IMG"
    run -w /data "$IMG" --smoke --out /data/bench --work /data/bench-work 2>"$W/cpu.err" >/dev/null \
        || { cat "$W/cpu.err" >&2; fail "the smoke run failed"; }
    [ -s "$W/bench/report.md" ] || fail "no report.md"
    grep -q '^- backend: flex .*compiled: flex, wgpu, cuda' "$W/bench/report.md" \
        || { grep '^- backend' "$W/bench/report.md" >&2; fail "the report does not name flex, chosen in a wgpu,cuda build"; }
    echo "ok: no GPU here, so the suite's smoke run went to the CPU ($(grep '^- backend' "$W/bench/report.md"))"
    GPU_RUN=(--smoke --out /data/bench-gpu --work /data/bench-gpu-work)
fi

# The driver's libcuda.so.1 links libc, libm, libdl, libpthread and librt. A stand-in linked
# the same way, whose cuInit says it was called and answers CUDA_ERROR_NO_DEVICE (100), mounted
# where the NVIDIA toolkit mounts driver libraries: every library it needs resolves inside the
# image (its own loader lists them), and the binary loads it and calls it.
mkdir -p "$W/driver"
cat > "$W/driver/stub.c" <<'C'
#include <stdio.h>
int cuInit(unsigned flags) { fprintf(stderr, "stand-in libcuda: cuInit called\n"); return 100; }
C
cc -shared -fPIC -o "$W/driver/libcuda.so.1" "$W/driver/stub.c" -Wl,--no-as-needed -lm \
    -l:libdl.so.2 -l:libpthread.so.0 -l:librt.so.1
DRIVER=(-v "$W/driver/libcuda.so.1:/usr/lib/x86_64-linux-gnu/libcuda.so.1:ro")
podman run --rm --network none "${DRIVER[@]}" --entrypoint /lib64/ld-linux-x86-64.so.2 "$IMG" \
    --list /usr/lib/x86_64-linux-gnu/libcuda.so.1 > "$W/ldd.txt" 2>&1 \
    || { cat "$W/ldd.txt" >&2; fail "the image's loader cannot load a libcuda stand-in"; }
for l in libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libc.so.6; do
    grep -q "$l => " "$W/ldd.txt" || { cat "$W/ldd.txt" >&2; fail "$l not resolved for libcuda"; }
done
echo "ok: a libcuda stand-in (libm, libdl, libpthread, librt, libc) resolves inside the image"

# BURN_DEVICE=cuda without a GPU fails with the reason (exit 1, no panic): with no driver at
# all, and with a driver that reports no device (the stand-in, which must have been called).
for driver in none stand-in; do
    extra=()
    [ "$driver" = stand-in ] && extra=("${DRIVER[@]}")
    set +e
    run -e RUST_BACKTRACE=0 -e BURN_DEVICE=cuda "${extra[@]}" -w /data "$IMG" "${GPU_RUN[@]}" 2>"$W/cuda.err" >/dev/null
    code=$?
    set -e
    [ "$code" = 1 ] || { cat "$W/cuda.err" >&2; fail "driver $driver: BURN_DEVICE=cuda exited $code, not 1"; }
    grep -q 'BURN_DEVICE=cuda: no CUDA device' "$W/cuda.err" || { cat "$W/cuda.err" >&2; fail "driver $driver: no reason given"; }
    if grep -q 'panicked' "$W/cuda.err"; then cat "$W/cuda.err" >&2; fail "driver $driver: it panicked"; fi
    if [ "$driver" = stand-in ]; then
        grep -q 'stand-in libcuda: cuInit called' "$W/cuda.err" || { cat "$W/cuda.err" >&2; fail "the stand-in driver was not loaded"; }
    fi
    echo "ok: BURN_DEVICE=cuda, driver $driver: exit 1, $(grep -o 'BURN_DEVICE=cuda: no CUDA device' "$W/cuda.err")"
done
