#!/usr/bin/env bash
# Checks the images built by images/build.sh: each runs as the non-root user with no network
# (`--help`), has the entrypoint, user and OCI labels it should, and the tiny pipeline runs
# through them on mounted folders: shapes data -> check-data -> train -> val gate -> export ->
# predict, then `serve` answers a detection request and stops on SIGTERM. Last, the images are
# pushed to a local registry (Debian's docker-registry on 127.0.0.1) and pulled back by digest.
#
#   apt-get install buildah podman runc docker-registry
#   bash images/build.sh && bash images/test.sh [--tag 0.1.0]
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=$(awk -F'"' '/^version =/ {print $2; exit}' Cargo.toml)
[ "${1:-}" = "--tag" ] && TAG=$2
REG=localhost/yolo-rs
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
W=$(mktemp -d)
chmod 0777 "$W"
cleanup() {
    podman rm -f yolo-serve-test >/dev/null 2>&1 || true
    [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
SCRIPT=images/test.sh
source images/lib.sh

for b in yolo-train yolo-infer yolo-export; do
    check_image "$REG/$b:$TAG" "/usr/local/bin/$b" "$TAG" "$REVISION"
done

run "$REG/yolo-infer:$TAG" shapes --out /data/shapes --train 16 --val 8 --imgsz 64 >/dev/null
run "$REG/yolo-infer:$TAG" check-data --data /data/shapes/data.yaml --report /data/check.json \
    --results-dir /data/results/check-data
[ "$(cat "$W/results/check-data/passed")" = true ] || fail "check-data did not pass"
run "$REG/yolo-train:$TAG" --data /data/shapes/data.yaml --epochs 1 --imgsz 64 --batch 8 --nbs 8 \
    --width-multiple 0.0625 --depth-multiple 0.33 --project /data/runs --name tiny --auto-resume \
    --results-dir /data/results/train --quiet
BEST=$(cat "$W/results/train/best")
[ -f "$W${BEST#/data}" ] || fail "no checkpoint at $BEST"
set +e
run "$REG/yolo-infer:$TAG" val --weights "$BEST" --data /data/shapes/data.yaml --imgsz 64 \
    --out /data/val --results-dir /data/results/val --min-map50 0
code=$?
set -e
[ "$code" = 0 ] || fail "val exited $code"
[ "$(cat "$W/results/val/passed")" = true ] || fail "gate"
run "$REG/yolo-export:$TAG" --weights "$BEST" --imgsz 64 --output /data/model.onnx >/dev/null
[ -s "$W/model.onnx" ] || fail "no ONNX file"
run "$REG/yolo-infer:$TAG" predict --weights "$BEST" --source /data/shapes/images/val --imgsz 64 \
    --conf 0.001 --project /data/predict --format none
[ "$(ls "$W/predict/predict/json" | wc -l)" = 8 ] || fail "predict wrote $(ls "$W/predict/predict/json" | wc -l) results"
echo "ok: shapes -> check-data -> train -> val -> export -> predict through the images"

PORT=18089
podman run -d --name yolo-serve-test --network host --user 65532:65532 -v "$W:/data:ro" \
    "$REG/yolo-infer:$TAG" serve --weights "$BEST" --imgsz 64 --addr "127.0.0.1:$PORT" >/dev/null
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
IMG=$(ls "$W"/shapes/images/val/* | head -1)
curl -sf --data-binary @"$IMG" -H 'Content-Type: image/png' "http://127.0.0.1:$PORT/v1/detect?conf=0.001" \
    | grep -q '"detections"' || fail "serve did not answer"
podman stop --time 20 yolo-serve-test >/dev/null
[ "$(podman inspect --format '{{.State.ExitCode}}' yolo-serve-test)" = 0 ] || fail "serve did not exit 0 on SIGTERM"
echo "ok: serve answered and stopped on SIGTERM"

# A local registry, push and pull by digest.
mkdir -p "$W/registry"
cat > "$W/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: 127.0.0.1:5055
YML
docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:5055/v2/ >/dev/null && break; sleep 0.2; done
for b in yolo-train yolo-infer yolo-export; do
    podman push --quiet --tls-verify=false --digestfile "$W/digest" "$REG/$b:$TAG" \
        "127.0.0.1:5055/yolo-rs/$b:$TAG"
    digest=$(cat "$W/digest")
    podman rmi -f "127.0.0.1:5055/yolo-rs/$b@$digest" >/dev/null 2>&1 || true
    podman pull --quiet --tls-verify=false "127.0.0.1:5055/yolo-rs/$b@$digest" >/dev/null
    podman run --rm --network none --user 65532:65532 "127.0.0.1:5055/yolo-rs/$b@$digest" --version
    echo "ok: $b pushed and pulled by digest $digest"
done
