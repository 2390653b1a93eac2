#!/usr/bin/env bash
# Builds the container images: static binaries (glibc, +crt-static, stripped) built by cargo on
# this host, each copied into an empty base with a passwd file for the non-root user 65532.
# No Docker daemon and no base image from a registry are needed: buildah builds FROM scratch.
#
#   bash images/build.sh [--tag 0.1.0] [--registry localhost/yolo-rs] [--only yolo-infer]
#   bash images/build.sh --only yolo-bench   # the benchmark image (yolo-bench + yolo-infer; not built by default)
#   bash images/build.sh --only yolo-train-cuda   # GPU training, tag <tag>-cuda (not built by default)
#   bash images/build.sh --only yolo-bench-cuda   # the benchmark suite for GPU nodes, tag <tag>-cuda
#
# The -cuda images are the exception: the `wgpu,cuda` build loads the NVIDIA driver with dlopen,
# so its binaries are dynamic glibc binaries (built into target/release, needing LLVM at build
# time: tools/cuda-llvm.sh), and the image carries the glibc runtime they link, copied from this
# host.
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
declare -A BUDGET_MB=([yolo-train]=40 [yolo-infer]=40 [yolo-export]=30 [yolo-bench]=80 [yolo-train-cuda]=200
    [yolo-bench-cuda]=360)
# The package of each binary, and the binaries each image holds besides its own (yolo-bench
# drives `yolo-infer serve` found next to it).
declare -A PACKAGE=([yolo-train]=yolo-train [yolo-infer]=yolo-infer [yolo-export]=yolo-export [yolo-bench]=yolo-benches)
declare -A ALSO=([yolo-bench]=yolo-infer [yolo-bench-cuda]=yolo-infer)
TARGET=x86_64-unknown-linux-gnu
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)

# The dynamic (GPU) images: the binary each is named after (its ALSO beside it), the cargo
# features, the tag suffix.
declare -A DYN_BIN=([yolo-train-cuda]=yolo-train [yolo-bench-cuda]=yolo-bench)
declare -A DYN_FEATURES=([yolo-train-cuda]=yolo-train/wgpu,yolo-train/cuda
    [yolo-bench-cuda]=yolo-benches/wgpu,yolo-benches/cuda,yolo-infer/wgpu,yolo-infer/cuda)
declare -A TAG_SUFFIX=([yolo-train-cuda]=-cuda [yolo-bench-cuda]=-cuda)

# Static binaries: a separate target folder keeps these flags from rebuilding target/release.
PKGS=()
for b in "${BINS[@]}"; do
    [ -n "${DYN_BIN[$b]:-}" ] && continue
    PKGS+=(-p "${PACKAGE[$b]}" --bin "$b")
    for x in ${ALSO[$b]:-}; do PKGS+=(-p "${PACKAGE[$x]}" --bin "$x"); done
done
if [ ${#PKGS[@]} -gt 0 ]; then
    # No debug info: `strip=symbols` removes it from the binaries anyway.
    CARGO_PROFILE_RELEASE_DEBUG=false RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
        cargo build --release --locked --target "$TARGET" --target-dir target/static "${PKGS[@]}"
fi
for b in "${BINS[@]}"; do
    [ -z "${DYN_BIN[$b]:-}" ] && continue
    [ "${DYN_FEATURES[$b]}" = "${DYN_FEATURES[$b]/cuda/}" ] || bash tools/cuda-llvm.sh
    # target/release, with the features the GPU benchmarks use (benches/gpu/prepare.sh), so
    # the two share one build of Burn's GPU stack.
    pkgs=()
    for x in "${DYN_BIN[$b]}" ${ALSO[$b]:-}; do pkgs+=(-p "${PACKAGE[$x]}" --bin "$x"); done
    cargo build --release --locked "${pkgs[@]}" --features "${DYN_FEATURES[$b]}"
done

CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
cp -r images/rootfs "$CTX/rootfs"
mkdir -p "$CTX/writable/work" "$CTX/writable/tmp"
export CONTAINERS_STORAGE_CONF="$PWD/images/storage.conf"
BUILDAH=(buildah)
for b in "${BINS[@]}"; do
    if [ -n "${DYN_BIN[$b]:-}" ]; then
        # The binaries stripped, and the glibc runtime they link where their loader looks: the
        # interpreter at its absolute path, the libraries in Debian's multiarch folder.
        mkdir -p "$CTX/lib" "$CTX/lib64" "$CTX/usr/lib/x86_64-linux-gnu" "$CTX/usr/lib64"
        libs=""
        for x in "${DYN_BIN[$b]}" ${ALSO[$b]:-}; do
            bin="target/release/$x"
            strip -o "$CTX/$x" "$bin"
            interp=$(readelf -l "$bin" | sed -n 's/.*program interpreter: \(.*\)]/\1/p')
            [ "$interp" = /lib64/ld-linux-x86-64.so.2 ] || { echo "$bin: unexpected interpreter '$interp'" >&2; exit 1; }
            cp -L "$interp" "$CTX/lib64/"
            these=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $1 " " $3}')
            [ -n "$these" ] || { echo "$bin: ldd found no libraries" >&2; exit 1; }
            libs=$(printf '%s\n%s\n' "$libs" "$these" | sed '/^$/d' | sort -u)
        done
        while read -r soname path; do cp -L "$path" "$CTX/lib/$soname"; done <<<"$libs"
        # The driver's libraries (mounted at run time) link glibc's libdl, libpthread and
        # librt, which the binaries themselves do not (since glibc 2.34 they are stubs, and
        # --as-needed drops them): without them in the image, libcuda would not load.
        libc_dir=$(dirname "$(echo "$libs" | awk '$1 == "libc.so.6" {print $2}')")
        for stub in libdl.so.2 libpthread.so.0 librt.so.1 libutil.so.1 libresolv.so.2; do
            [ -e "$CTX/lib/$stub" ] || cp -L "$libc_dir/$stub" "$CTX/lib/$stub"
        done
        echo "$b: $(echo "$libs" | awk '{print $1}' | tr '\n' ' ')+ glibc's libdl, libpthread, librt, libutil, libresolv, from this host"
    else
        bin="target/static/$TARGET/release/$b"
        # A static binary has no program interpreter; one that needs glibc's loader would not
        # run in an empty image.
        if readelf -l "$bin" | grep -q 'program interpreter'; then
            echo "$bin is not static" >&2
            exit 1
        fi
        cp "$bin" "$CTX/$b"
        for x in ${ALSO[$b]:-}; do cp "target/static/$TARGET/release/$x" "$CTX/$x"; done
    fi
    image="$REGISTRY/${DYN_BIN[$b]:-$b}:$TAG${TAG_SUFFIX[$b]:-}"
    "${BUILDAH[@]}" bud --quiet --isolation chroot --layers=false \
        --build-arg VERSION="$TAG" --build-arg REVISION="$REVISION" \
        -f "images/Containerfile.$b" -t "$image" "$CTX" >/dev/null
    size=$("${BUILDAH[@]}" inspect --type image --format '{{.Docker.Size}}' "$image" 2>/dev/null || echo 0)
    # What was copied in (binaries, libraries, passwd), when buildah does not say.
    [ "$size" -gt 0 ] 2>/dev/null || size=$(du -sb "$CTX" | cut -f1)
    mb=$(( (size + 1048575) / 1048576 ))
    echo "$image: $mb MB (budget ${BUDGET_MB[$b]} MB)"
    if [ "$mb" -gt "${BUDGET_MB[$b]}" ]; then
        echo "$image is over its size budget" >&2
        exit 1
    fi
    rm -rf "$CTX/$b" "$CTX/${DYN_BIN[$b]:-$b}" "$CTX/lib" "$CTX/lib64" "$CTX/usr"
    for x in ${ALSO[$b]:-}; do rm "$CTX/$x"; done
done
