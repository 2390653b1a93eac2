#!/usr/bin/env bash
# Lets `--features cuda` build without internet, against Debian's LLVM 22.
#
# Burn 0.22.1's CUDA backend compiles its kernels with LLVM (cubecl-cuda -> cubecl-llvm, NVPTX
# target). The build script of `tracel-llvm-bundler` (a build dependency of cubecl-llvm)
# downloads a prebuilt LLVM 23.1 into
#     ${XDG_DATA_HOME:-~/.local/share}/tracel/tracel-llvm-<version>
# unless the file `.tracel-llvm-installed` is already there; cubecl-llvm's own build script
# then links LLVM's static libraries as `<that folder>/bin/llvm-config --link-static` lists them.
# This script fills that folder from Debian's packages instead:
#   - installs llvm-22-dev, libpolly-22-dev and libzstd-dev (apt; as root, when missing),
#   - writes `bin/llvm-config`, a wrapper of Debian's llvm-config-22 that names libz3 as `-lz3`
#     (Debian's prints the path of the .so, which cubecl-llvm's build script would misread),
#   - and the marker file, so that nothing is downloaded.
# No CUDA toolkit is needed to build: the binaries load the driver (libcuda) at run time.
#
# Online builds need none of this (Burn downloads its LLVM 23.1). Run it once per machine or
# container, before `cargo build --features cuda`; `.ci/run` does. `--print-dir` prints the
# folder. Set YOLO_RS_LLVM_CONFIG to use another llvm-config (another LLVM install).
set -euo pipefail
cd "$(dirname "$0")/.."

# The bundler's version names the folder: read it from Cargo.lock, so a Burn upgrade that
# moves the bundler lands in the right place (or fails here, loudly).
version=$(awk '/^name = "tracel-llvm-bundler"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [ -z "$version" ]; then
    echo "cuda-llvm.sh: tracel-llvm-bundler is not in Cargo.lock: nothing to prepare" >&2
    exit 1
fi
prefix="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-$version"
if [ "${1:-}" = "--print-dir" ]; then
    echo "$prefix"
    exit 0
fi

# A real LLVM there (Burn's own download, on a machine that was online) is left alone.
if [ -e "$prefix/.tracel-llvm-installed" ] && [ -e "$prefix/bin/llvm-config" ] \
        && ! grep -q "Written by yolo-rs" "$prefix/bin/llvm-config"; then
    echo "cuda-llvm.sh: $prefix already holds an LLVM ($("$prefix/bin/llvm-config" --version 2>/dev/null)): left as it is"
    exit 0
fi

llvm_config="${YOLO_RS_LLVM_CONFIG:-/usr/lib/llvm-22/bin/llvm-config}"
if [ -z "${YOLO_RS_LLVM_CONFIG:-}" ] && { [ ! -x "$llvm_config" ] || [ ! -f /usr/lib/llvm-22/lib/libPolly.a ] \
        || ! dpkg -s libzstd-dev >/dev/null 2>&1; }; then
    if [ "$(id -u)" != 0 ]; then
        echo "cuda-llvm.sh: $llvm_config is missing; as root: apt-get install llvm-22-dev libpolly-22-dev libzstd-dev" >&2
        exit 1
    fi
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        llvm-22-dev libpolly-22-dev libzstd-dev >/dev/null
fi
"$llvm_config" --version >/dev/null

# Written only when it changes: the bundler's build script reruns when the marker's mtime
# moves, and with it cubecl-llvm and everything above it (a full rebuild of Burn's GPU stack).
mkdir -p "$prefix/bin"
cat > "$prefix/bin/llvm-config.tmp" <<EOF
#!/bin/sh
# Written by yolo-rs tools/cuda-llvm.sh: Debian's LLVM in place of Burn's download.
out=\$("$llvm_config" "\$@") || exit \$?
# A library given as a path to its .so (libz3) becomes -l<name>.
# (Two passes: a match takes the space after it, so a second path right after is left to the next.)
printf '%s\n' "\$out" | sed -E -e 's#(^| )/[^ ]*/lib([A-Za-z0-9_+-]+)\.so(\.[0-9.]+)?( |$)#\1-l\2\4#g' -e 's#(^| )/[^ ]*/lib([A-Za-z0-9_+-]+)\.so(\.[0-9.]+)?( |$)#\1-l\2\4#g'
EOF
chmod +x "$prefix/bin/llvm-config.tmp"
if cmp -s "$prefix/bin/llvm-config.tmp" "$prefix/bin/llvm-config"; then
    rm -f "$prefix/bin/llvm-config.tmp"
else
    mv -f "$prefix/bin/llvm-config.tmp" "$prefix/bin/llvm-config"
fi
[ -e "$prefix/.tracel-llvm-installed" ] || touch "$prefix/.tracel-llvm-installed"
echo "cuda-llvm.sh: $prefix -> LLVM $("$prefix/bin/llvm-config" --version) ($llvm_config)"
echo "cuda-llvm.sh: system libraries: $("$prefix/bin/llvm-config" --link-static --system-libs)"
