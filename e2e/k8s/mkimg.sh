#!/usr/bin/env bash
# mkimg.sh REF ROOTFS OUT [ENTRYPOINT_JSON] [CMD_JSON] : packs a root
# directory as a single-layer OCI image archive (for `ctr images import`),
# with tar and sha256sum only: no registry, no image builder.
set -euo pipefail
REF=$1; ROOT=$2; OUT=$3; EP=${4:-null}; CMD=${5:-null}
W=$(mktemp -d "${OUT%/*}/.img.XXXXXX")
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/blobs/sha256"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$ROOT" -cf "$W/layer.tar" .
LD=$(sha256sum "$W/layer.tar" | cut -d' ' -f1); LS=$(stat -c %s "$W/layer.tar"); mv "$W/layer.tar" "$W/blobs/sha256/$LD"
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"e2e/k8s/mkimg.sh"}]}' "$EP" "$CMD" "$LD" > "$W/config.json"
CD=$(sha256sum "$W/config.json" | cut -d' ' -f1); CS=$(stat -c %s "$W/config.json"); mv "$W/config.json" "$W/blobs/sha256/$CD"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$CD" "$CS" "$LD" "$LS" > "$W/manifest.json"
MD=$(sha256sum "$W/manifest.json" | cut -d' ' -f1); MS=$(stat -c %s "$W/manifest.json"); mv "$W/manifest.json" "$W/blobs/sha256/$MD"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' "$MD" "$MS" "$REF" "${REF##*:}" > "$W/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$W/oci-layout"
tar --owner=0 --group=0 -C "$W" -cf "$OUT" oci-layout index.json blobs
echo "$REF -> $OUT"
