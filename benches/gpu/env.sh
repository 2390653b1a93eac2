# Source it (`source benches/gpu/env.sh`), do not run it. Sourced by benches/gpu/run.sh (and by one-off commands on a lent GPU machine): unpacks the
# Vulkan loader from .gl, the wgpu binaries from .gpu into $bin and Ultralytics from .whl, and
# sets $out (the folder whose files come back) and PYTHONPATH.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out="${OUT:-/tmp/yolo-rs-gpu}"
mkdir -p "$out"

# The Vulkan loader (wgpu's way to the GPU) is not in that machine's image.
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$egl"

# The binaries, compressed by prepare.sh (Python's lzma: xz itself may be missing there).
bin=/tmp/yolo-rs-bin
mkdir -p "$bin"
for b in yolo-time train-time; do
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' ".gpu/$b.xz" "$bin/$b" || return 1
    chmod +x "$bin/$b"
done

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
