#!/usr/bin/env bash
# Issue #31 item 4 on a lent GPU: the README's quick-start training run (shapes demo data, 20
# epochs, 160 px, batch 16) with the same binary on the CPU (`flex`) and on each GPU backend
# named, one JSON line per epoch into $out/epochs-<backend>.jsonl, and a table: wall time, last
# epoch's images/s and loader wait (`data_wait_s`: how long the step waited for the next
# batch, so whether the loader keeps the GPU fed), final mAP50 / mAP50-95. A GPU run compiles
# and tunes its kernels in its first epoch, which its wall time includes.
#   bash benches/gpu/epochs.sh [BACKEND...]      # default: cuda flex; sourced env.sh gives $bin, $out
# Each run is bounded by YOLO_RS_EPOCHS_RUN_S seconds (default 95), so the table is printed
# even when a run is cut short (its finished epochs are in it).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ -n "${bin:-}" ] || { source "$here/env.sh" || exit 1; }
backends=("$@")
[ ${#backends[@]} -gt 0 ] || backends=(cuda flex)
: > "$out/epochs-wall.txt"
status=0
for b in "${backends[@]}"; do
    start=$(date +%s.%N)
    timeout -k 5 "${YOLO_RS_EPOCHS_RUN_S:-95}" "$bin/yolo-train" --device "$b" --data shapes --epochs 20 --imgsz 160 --batch 16 --nbs 16 \
        --width-multiple 0.125 --depth-multiple 0.33 --project /tmp/yolo-rs-epochs --name "$b" --json \
        > "$out/epochs-$b.jsonl" 2> "$out/epochs-$b.err"
    rc=$?
    echo "$b $rc $(python3 -c "import time; print(round(time.time() - $start, 1))")" >> "$out/epochs-wall.txt"
    [ "$rc" -eq 0 ] || { status=1; tail -5 "$out/epochs-$b.err"; }
done
python3 - "$out" "${backends[@]}" <<'PY'
import json, sys
out, backends = sys.argv[1], sys.argv[2:]
wall = {l.split()[0]: (l.split()[1], l.split()[2]) for l in open(f"{out}/epochs-wall.txt")}
print(f"{'backend':8} {'exit':>4} {'wall s':>7} {'epochs':>6} {'img/s':>7} {'wait s':>7} {'epoch s':>7} {'mAP50':>6} {'mAP50-95':>8}")
for b in backends:
    try:
        rows = [json.loads(l) for l in open(f"{out}/epochs-{b}.jsonl") if l.startswith("{")]
    except OSError:
        rows = []
    rc, w = wall.get(b, ("?", "?"))
    if not rows:
        print(f"{b:8} {rc:>4} {w:>7}  no epoch finished"); continue
    e = rows[-1]; m = e.get("metrics") or {}
    print(f"{b:8} {rc:>4} {w:>7} {len(rows):>6} {e['images_per_s']:>7.1f} {e['data_wait_s']:>7.2f} "
          f"{e['seconds']:>7.2f} {m.get('map50', float('nan')):>6.3f} {m.get('map50_95', float('nan')):>8.3f}")
PY
exit "$status"
