#!/usr/bin/env bash
# scripts/mkimage.sh DIR TAG ROOTFS...: write an OCI image layout at DIR with
# one gzip layer per ROOTFS directory (bottom first), tagged TAG. Needs only
# tar, gzip and sha256sum. With no ROOTFS, a busybox-static root filesystem
# is made (install busybox-static first). Run as root, files keep their
# numeric owners (an image with files of several uids); run as a user, every
# file is root's in the image, as a build context is.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: mkimage.sh DIR TAG [ROOTFS...]" >&2; exit 2; }
dir=$1 tag=$2
shift 2
if [ $# -eq 0 ]; then
    [ -x /bin/busybox ] || { echo "mkimage.sh: /bin/busybox missing (apt-get install busybox-static)" >&2; exit 1; }
    r=$(mktemp -d)
    trap 'rm -rf "$r"' EXIT
    mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/proc" "$r/sys" "$r/dev" "$r/root"
    cp /bin/busybox "$r/bin/busybox"
    for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
    echo "root:x:0:0:root:/root:/bin/sh" > "$r/etc/passwd"
    echo "root:x:0:" > "$r/etc/group"
    set -- "$r"
fi
diffs="" layers=""
mkdir -p "$dir/blobs/sha256"
owners=(--numeric-owner)
[ "$(id -u)" -eq 0 ] || owners+=(--owner=0 --group=0)
for l in "$@"; do
    tar --sort=name "${owners[@]}" -C "$l" -cf "$dir/layer.tar" .
    diff=$(sha256sum < "$dir/layer.tar" | cut -d' ' -f1)
    gzip -n -c "$dir/layer.tar" > "$dir/layer.tgz"
    dig=$(sha256sum < "$dir/layer.tgz" | cut -d' ' -f1)
    size=$(stat -c %s "$dir/layer.tgz")
    mv "$dir/layer.tgz" "$dir/blobs/sha256/$dig"
    diffs="$diffs${diffs:+,}\"sha256:$diff\""
    layers="$layers${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$dig\",\"size\":$size}"
done
rm -f "$dir/layer.tar"
cfg="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/bin\"],\"Cmd\":[\"/bin/sh\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[$diffs]}}"
cdig=$(printf %s "$cfg" | sha256sum | cut -d' ' -f1)
printf %s "$cfg" > "$dir/blobs/sha256/$cdig"
man="{\"schemaVersion\":2,\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$cdig\",\"size\":${#cfg}},\"layers\":[$layers]}"
mdig=$(printf %s "$man" | sha256sum | cut -d' ' -f1)
printf %s "$man" > "$dir/blobs/sha256/$mdig"
echo '{"imageLayoutVersion":"1.0.0"}' > "$dir/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$mdig" "${#man}" "$tag" > "$dir/index.json"

echo "$dir: OCI image layout tagged $tag"
