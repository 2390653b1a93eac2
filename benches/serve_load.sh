#!/usr/bin/env bash
# Loopback load test of `yolo-infer serve` (yolov8n, 640 px): requests/s and p50/p99 latency at
# 1, 8 and 32 connections with wrk, beside the single-image latency of `predict`, and the
# server's RSS before and after 10k requests.
#
#   apt-get install wrk
#   bash benches/serve_load.sh [--duration 20] [--requests 10000] [--out /tmp/serve-load]
#
# A fresh seeded yolov8n (80 classes; speed does not depend on the weights' values) serves a
# PNG from the shapes generator (640 px on its long side). Results: one Markdown table on stdout and
# serve_load.json in --out.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=20
REQUESTS=10000
OUT=/tmp/serve-load
PORT=18080
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --requests) REQUESTS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
mkdir -p "$OUT"
cargo build --release -q -p yolo-infer -p yolo-benches --bin yolo-infer --bin make-checkpoint
BIN=target/release
[ -f "$OUT/yolov8n.safetensors" ] || "$BIN/make-checkpoint" --scale n --nc 80 --out "$OUT/yolov8n.safetensors"
[ -d "$OUT/shapes" ] || "$BIN/yolo-infer" shapes --out "$OUT/shapes" --train 1 --val 1 --imgsz 640 >/dev/null
IMG=$(ls "$OUT"/shapes/images/val/* | head -1)
cat > "$OUT/post.lua" <<LUA
local f = io.open("$IMG", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/png"
LUA

# predict, one image at a time: the single-request latency the server is compared with.
"$BIN/yolo-infer" predict --weights "$OUT/yolov8n.safetensors" --source "$IMG" --imgsz 640 \
    --format none --project "$OUT/predict" --exist-ok 2>"$OUT/predict.txt"
PREDICT=$(grep -o '[0-9.]*ms inference' "$OUT/predict.txt" | grep -o '[0-9.]*')

"$BIN/yolo-infer" serve --weights "$OUT/yolov8n.safetensors" --addr 127.0.0.1:$PORT --imgsz 640 \
    --queue 64 2>"$OUT/serve.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do sleep 0.2; done
rss() { awk '/VmRSS/ {print $2}' /proc/$PID/status; }
RSS0=$(rss)
ROWS=""
JSON="["
for C in 1 8 32; do
    wrk -t $(( C < 2 ? 1 : 2 )) -c $C -d ${DURATION}s --latency -s "$OUT/post.lua" \
        "http://127.0.0.1:$PORT/v1/detect" > "$OUT/wrk_c$C.txt"
    RPS=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk_c$C.txt")
    P50=$(awk '$1 == "50%" {print $2}' "$OUT/wrk_c$C.txt")
    P99=$(awk '$1 == "99%" {print $2}' "$OUT/wrk_c$C.txt")
    NON2XX=$(awk '/Non-2xx/ {print $5}' "$OUT/wrk_c$C.txt")
    ROWS="$ROWS| $C | $RPS | $P50 | $P99 | ${NON2XX:-0} |\n"
    JSON="$JSON{\"connections\": $C, \"rps\": $RPS, \"p50\": \"$P50\", \"p99\": \"$P99\", \"non_2xx\": ${NON2XX:-0}},"
done
# RSS once batches of every size have run (its plateau: larger batches need larger buffers,
# which the allocator keeps, see backend::keep_freed_memory), then after --requests requests in
# all: equal when nothing leaks.
RSS1=$(rss)
served() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^yolo_http_requests_total.*detect.*status="200"/ {s += $2} END {print s + 0}'; }
while [ "$(served | cut -d. -f1)" -lt "$REQUESTS" ]; do
    wrk -t 2 -c 8 -d 10s -s "$OUT/post.lua" "http://127.0.0.1:$PORT/v1/detect" >/dev/null
done
RSS2=$(rss)
BATCH=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^yolo_batch_size_sum/ {s=$2} /^yolo_batch_size_count/ {c=$2} END {printf "%.2f", s / c}')
echo "yolov8n 640, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "predict, one image: ${PREDICT} ms inference"
echo
echo "| connections | requests/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
printf "$ROWS"
echo
echo "RSS: ${RSS0} kB after warm-up, ${RSS1} kB after the runs above, ${RSS2} kB after $(served) requests; mean batch ${BATCH}"
echo "${JSON%,}], \"predict_inference_ms\": ${PREDICT}, \"rss_kb_warm\": $RSS0, \"rss_kb_loaded\": $RSS1, \"rss_kb_after\": $RSS2, \"mean_batch\": $BATCH}" \
    | sed 's/^\[/{"runs": [/' > "$OUT/serve_load.json"
