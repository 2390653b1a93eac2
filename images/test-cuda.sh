#!/usr/bin/env bash
# Checks the GPU training image (images/build.sh --only yolo-train-cuda) on a host without a
# GPU, which is what CI-like hosts are: it runs as user 65532 with no network and no shell
# inside, its loader and glibc libraries work (a one-epoch training run, chosen onto the CPU
# because no CUDA device answers), a stand-in for the driver's libcuda finds the glibc
# libraries it links, and naming the GPU (`BURN_DEVICE=cuda`) without one fails with the
# reason, not a panic. Needs a C compiler (cc) for the stand-in. Kernels on a real GPU are checked by benches/gpu/ instead.
#
#   bash images/build.sh --only yolo-train-cuda && bash images/test-cuda.sh [--tag 0.1.0]
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=$(awk -F'"' '/^version =/ {print $2; exit}' Cargo.toml)
[ "${1:-}" = "--tag" ] && TAG=$2
IMG=localhost/yolo-rs/yolo-train:$TAG-cuda
INFER=localhost/yolo-rs/yolo-infer:$TAG
export CONTAINERS_CONF="$PWD/images/containers.conf"
export CONTAINERS_STORAGE_CONF="$PWD/images/storage.conf"
W=$(mktemp -d)
chmod 0777 "$W"
trap 'rm -rf "$W"' EXIT
run() { podman run --rm --network none --user 65532:65532 -v "$W:/data" "$@"; }
fail() { echo "images/test-cuda.sh: $*" >&2; exit 1; }

run "$IMG" --help >/dev/null || fail "$IMG --help"
[ "$(podman image inspect --format '{{.Config.User}}' "$IMG")" = "65532:65532" ] || fail "user"
[ "$(podman image inspect --format '{{index .Config.Labels "org.opencontainers.image.version"}}' "$IMG")" = "$TAG-cuda" ] \
    || fail "version label"
if podman run --rm --network none --entrypoint /bin/sh "$IMG" -c true >/dev/null 2>&1; then
    fail "$IMG has a shell"
fi
echo "ok: $IMG (user 65532, labels, no shell)"

# Data from the CPU yolo-infer image when it is there, else from the image's own demo set.
if podman image exists "$INFER"; then
    run "$INFER" shapes --out /data/shapes --train 16 --val 8 --imgsz 64 >/dev/null
    DATA=/data/shapes/data.yaml
else
    DATA=shapes
fi
run -w /data "$IMG" --data "$DATA" --epochs 1 --imgsz 64 --batch 8 --nbs 8 \
    --width-multiple 0.0625 --depth-multiple 0.33 --project /data/runs --name tiny \
    --results-dir /data/results 2>"$W/train.err" >/dev/null || { cat "$W/train.err" >&2; fail "training failed"; }
grep -q '^device: flex (auto' "$W/train.err" || { cat "$W/train.err" >&2; fail "not trained on flex by auto choice"; }
BEST=$(cat "$W/results/best")
[ -f "$W${BEST#/data}" ] || fail "no checkpoint at $BEST"
echo "ok: no GPU here, so the image trained one epoch on the CPU ($(grep '^device:' "$W/train.err"))"

# The driver's libcuda.so.1 links libc, libm, libdl, libpthread and librt. A stand-in linked
# the same way, whose cuInit says it was called and answers CUDA_ERROR_NO_DEVICE (100), mounted
# where the NVIDIA toolkit mounts driver libraries: every library it needs resolves inside the
# image (its own loader lists them), and yolo-train loads it and calls it.
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
    run -e RUST_BACKTRACE=0 -e BURN_DEVICE=cuda "${extra[@]}" "$IMG" --data "$DATA" --epochs 1 --imgsz 64 \
        --project /data/runs --name gpu 2>"$W/cuda.err" >/dev/null
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
