#!/usr/bin/env bash
# Checks the GPU training image (images/build.sh --only yolo-train-cuda) on a host without a
# GPU, which is what CI-like hosts are: it runs as user 65532 with no network and no shell
# inside, its loader and glibc libraries work (a one-epoch training run, chosen onto the CPU
# because no CUDA device answers), and naming the GPU (`BURN_DEVICE=cuda`) without one fails
# with the reason, not a panic. Kernels on a real GPU are checked by benches/gpu/ instead.
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

set +e
run -e BURN_DEVICE=cuda "$IMG" --data "$DATA" --epochs 1 --imgsz 64 --project /data/runs --name gpu \
    2>"$W/cuda.err" >/dev/null
code=$?
set -e
[ "$code" = 1 ] || { cat "$W/cuda.err" >&2; fail "BURN_DEVICE=cuda without a GPU exited $code, not 1"; }
grep -q 'BURN_DEVICE=cuda: no CUDA device' "$W/cuda.err" || { cat "$W/cuda.err" >&2; fail "no reason given"; }
if grep -q 'panicked' "$W/cuda.err"; then cat "$W/cuda.err" >&2; fail "it panicked"; fi
echo "ok: BURN_DEVICE=cuda without a GPU: exit 1, '$(head -c 200 "$W/cuda.err" | head -1)'"
