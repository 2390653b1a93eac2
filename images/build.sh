#!/usr/bin/env bash
# Builds the container images: static binaries (glibc, +crt-static, stripped) built by cargo on
# this host, each copied into an empty base with a passwd file for the non-root user 65532.
# No Docker daemon and no base image from a registry are needed: buildah builds FROM scratch.
#
#   bash images/build.sh [--tag 0.1.0] [--registry localhost/yolo-rs] [--only yolo-infer]
#   bash images/build.sh --only yolo-bench   # the benchmark image (yolo-bench + yolo-infer; not built by default)
#
# Needs buildah (Debian: apt-get install buildah). Prints each image's size and fails when one
# exceeds its budget (BUDGET_MB below).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=$(awk -F'"' '/^version =/ {print $2; exit}' Cargo.toml)
REGISTRY=localhost/yolo-rs
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG=$2; shift 2 ;;
        --registry) REGISTRY=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
BINS=(yolo-train yolo-infer yolo-export)
[ -n "$ONLY" ] && BINS=("$ONLY")
declare -A BUDGET_MB=([yolo-train]=40 [yolo-infer]=40 [yolo-export]=30 [yolo-bench]=80)
# The package of each binary, and the binaries each image holds besides its own (yolo-bench
# drives `yolo-infer serve` found next to it).
declare -A PACKAGE=([yolo-train]=yolo-train [yolo-infer]=yolo-infer [yolo-export]=yolo-export [yolo-bench]=yolo-benches)
declare -A ALSO=([yolo-bench]=yolo-infer)
TARGET=x86_64-unknown-linux-gnu
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)

# Static binaries: a separate target folder keeps these flags from rebuilding target/release.
export RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols"
PKGS=()
for b in "${BINS[@]}"; do
    PKGS+=(-p "${PACKAGE[$b]}" --bin "$b")
    for x in ${ALSO[$b]:-}; do PKGS+=(-p "${PACKAGE[$x]}" --bin "$x"); done
done
cargo build --release --locked --target "$TARGET" --target-dir target/static "${PKGS[@]}"

CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
cp -r images/rootfs "$CTX/rootfs"
mkdir -p "$CTX/writable/work" "$CTX/writable/tmp"
export CONTAINERS_STORAGE_CONF="$PWD/images/storage.conf"
BUILDAH=(buildah)
for b in "${BINS[@]}"; do
    bin="target/static/$TARGET/release/$b"
    # A static binary has no program interpreter; one that needs glibc's loader would not run
    # in an empty image.
    if readelf -l "$bin" | grep -q 'program interpreter'; then
        echo "$bin is not static" >&2
        exit 1
    fi
    cp "$bin" "$CTX/$b"
    for x in ${ALSO[$b]:-}; do cp "target/static/$TARGET/release/$x" "$CTX/$x"; done
    image="$REGISTRY/$b:$TAG"
    "${BUILDAH[@]}" bud --quiet --isolation chroot --layers=false \
        --build-arg VERSION="$TAG" --build-arg REVISION="$REVISION" \
        -f "images/Containerfile.$b" -t "$image" "$CTX" >/dev/null
    size=$("${BUILDAH[@]}" inspect --type image --format '{{.Docker.Size}}' "$image" 2>/dev/null || echo 0)
    [ "$size" -gt 0 ] 2>/dev/null || size=$(stat -c %s "$bin")
    mb=$(( (size + 1048575) / 1048576 ))
    echo "$image: $mb MB (budget ${BUDGET_MB[$b]} MB)"
    if [ "$mb" -gt "${BUDGET_MB[$b]}" ]; then
        echo "$image is over its size budget" >&2
        exit 1
    fi
    rm "$CTX/$b"
    for x in ${ALSO[$b]:-}; do rm "$CTX/$x"; done
done
