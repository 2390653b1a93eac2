# Source it (`source benches/gpu/env.sh`), do not run it. Sourced by benches/gpu/run.sh, tests.sh
# and check.sh (and by one-off commands on a lent GPU machine): unpacks what was carried (the
# Vulkan loader from .gl, the binaries of .gpu, .gpu-tests and .gpu-epochs into $bin, Ultralytics from .whl;
# once per machine) and sets $out (the folder whose files come back) and PYTHONPATH.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out="${OUT:-/tmp/yolo-rs-gpu}"
mkdir -p "$out"
bin=/tmp/yolo-rs-bin
mkdir -p "$bin"

icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$egl"
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1

fresh() {  # fresh FILE: FILE was carried and is newer than what was unpacked from it
    [ -f "$1" ] && { [ ! -f "$bin/.${1//\//_}" ] || [ "$1" -nt "$bin/.${1//\//_}" ]; }
}
unpacked() { touch "$bin/.${1//\//_}"; }

# The Vulkan loader (wgpu's way to the GPU) is not in that machine's image.
if ls .gl/*.deb >/dev/null 2>&1 && fresh .gl/libvulkan1*.deb; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    unpacked .gl/libvulkan1*.deb
fi
# The binaries, packed by prepare.sh (Python's lzma: xz itself may be missing there).
for f in .gpu/bin.tar.xz .gpu-tests/bin.tar.xz .gpu-epochs/bin.tar.xz; do
    if fresh "$f"; then
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$f" "$bin" || return 1
        unpacked "$f"
    fi
done
if ls .whl/*.whl >/dev/null 2>&1 && fresh "$(ls .whl/*.whl | head -1)"; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
    unpacked "$(ls .whl/*.whl | head -1)"
fi
