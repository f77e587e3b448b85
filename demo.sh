#!/usr/bin/env bash
# Set up and run a real union mount demo on a fresh Debian machine (as root):
# installs fuse3, builds and installs unionfs-mount, then shows precedence,
# copy-up and whiteouts on a live mount, and unmounts.
set -euo pipefail
cd "$(dirname "$0")"
# fuse3, attr and busybox-static for the demo; libseccomp-dev and pkg-config
# to build the launcher's seccomp filter; the seccomp profile Podman ships
# (golang-github-containers-common), which the tests load; xfsprogs, for the
# reflink tests' xfs images; acl, for the ACL tests' setfacl; e2fsprogs, chattr;
# protobuf-compiler (protoc) to build the snapshotter's gRPC code; containerd,
# runc, golang-go, containerd's Go sources and docker-registry for the
# snapshotter tests; uidmap (newuidmap) for rootless use.
suite=/usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite
if ! command -v mount.fuse3 >/dev/null || ! command -v getfattr >/dev/null || [ ! -x /bin/busybox ] \
    || ! pkg-config --exists libseccomp 2>/dev/null || [ ! -e /usr/share/containers/seccomp.json ] \
    || ! command -v mkfs.xfs >/dev/null || ! command -v setfacl >/dev/null \
    || ! command -v chattr >/dev/null || ! command -v protoc >/dev/null \
    || ! command -v containerd >/dev/null || ! command -v runc >/dev/null \
    || ! command -v go >/dev/null || ! command -v docker-registry >/dev/null || ! command -v newuidmap >/dev/null || [ ! -d "$suite" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 attr acl busybox-static \
        libseccomp-dev pkg-config golang-github-containers-common xfsprogs e2fsprogs \
        protobuf-compiler containerd runc golang-go golang-github-containerd-containerd-dev \
        docker-registry uidmap procps >/dev/null
fi
cargo build --release --quiet --workspace
install -m 0755 target/release/unionfs-mount target/release/unionctl target/release/snapmerge target/release/unionfs-driver target/release/unionfs-run /usr/local/bin/

demo=$(mktemp -d /tmp/unionfs-demo.XXXXXX)
trap 'fusermount3 -u "$demo/mnt" 2>/dev/null || true; unionfs-driver --root "$demo/store" cleanup 2>/dev/null; rm -rf "$demo"' EXIT
mkdir -p "$demo"/{rw,ro,mnt}
echo "from the read-only branch" > "$demo/ro/hello"
echo "lower" > "$demo/ro/gone"
mkdir "$demo/ro/docs" && echo "a lower doc" > "$demo/ro/docs/a"

run() { echo "\$ $*"; "$@"; }
run unionfs-mount "$demo/rw=rw:$demo/ro=ro" "$demo/mnt"
run ls "$demo/mnt"
run unionctl "$demo/mnt" --list
run cat "$demo/mnt/hello"
echo "\$ echo 'appended through the union' >> $demo/mnt/hello"
echo "appended through the union" >> "$demo/mnt/hello"
run cat "$demo/mnt/hello"
run rm "$demo/mnt/gone"
run mv "$demo/mnt/docs" "$demo/mnt/papers"
run ls -A "$demo/mnt" "$demo/rw" "$demo/ro"
echo "# the read-only branch is untouched; the copy-up, the whiteouts and the"
echo "# renamed (opaque) directory are all in the writable branch"
run cat "$demo/ro/hello"
run fusermount3 -u "$demo/mnt"

echo "# and a container: an image built from busybox-static, stacked with the union"
run ./scripts/mkimage.sh "$demo/busybox-image" latest
run unionfs-driver --root "$demo/store" import --name busybox "$demo/busybox-image"
run unionfs-driver --root "$demo/store" run --rm --hostname demo busybox -- /bin/sh -c 'echo "PID $$ on $(hostname)"; id; ls /'
echo "demo done: unionfs-mount, unionctl, snapmerge, unionfs-driver and unionfs-run are installed in /usr/local/bin"
