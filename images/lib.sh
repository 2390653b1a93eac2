# Shared by images/test.sh and images/test-cuda.sh (sourced; the caller sets `set -euo pipefail`,
# the working folder $W, and SCRIPT, its name for messages).
export CONTAINERS_CONF="$PWD/images/containers.conf"
export CONTAINERS_STORAGE_CONF="$PWD/images/storage.conf"

# An image run as the non-root user, without network, with $W mounted at /data.
run() { podman run --rm --network none --user 65532:65532 -v "$W:/data" "$@"; }
fail() { echo "$SCRIPT: $*" >&2; exit 1; }

# check_image IMAGE ENTRYPOINT VERSION [REVISION]: `--help` runs as the non-root user without
# network; the entrypoint, user and OCI labels are as built; there is no shell inside (a command
# other than the binary cannot run).
check_image() {
    local img=$1 entry=$2 version=$3 revision=${4:-}
    run "$img" --help >/dev/null || fail "$img --help"
    [ "$(podman image inspect --format '{{.Config.User}}' "$img")" = "65532:65532" ] || fail "$img: user"
    [ "$(podman image inspect --format '{{json .Config.Entrypoint}}' "$img")" = "[\"$entry\"]" ] \
        || fail "$img: entrypoint"
    if [ -n "$revision" ]; then
        [ "$(podman image inspect --format '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$img")" = "$revision" ] \
            || fail "$img: revision label"
    fi
    [ "$(podman image inspect --format '{{index .Config.Labels "org.opencontainers.image.version"}}' "$img")" = "$version" ] \
        || fail "$img: version label"
    if podman run --rm --network none --entrypoint /bin/sh "$img" -c true >/dev/null 2>&1; then
        fail "$img has a shell"
    fi
    echo "ok: $img (user 65532, entrypoint, labels, no shell)"
}
