#!/usr/bin/env bash
# Measures committing a container image with `osbuild commit --image` against the
# hand-made way, `podman export $(podman create IMAGE) | ostree commit --tree=tar=-`, side
# by side in one run, into empty archive repositories, page cache dropped before each.
# (ostree cannot commit the device nodes podman export adds in /dev, nor a tar without
# its root directory: the hand-made line filters /dev/* with bsdtar and passes
# --tar-autocreate-parents.) Three images:
#   1. examples/container as built: its dracut made an initramfs with ostree's module
#      (ostree-boot asks for it), which osbuild keeps;
#   2. the same image without that initramfs: osbuild builds one with the image's dracut
#      (the hand-made commit has none and would not boot);
#   3. the same image with its initramfs where bootc puts it
#      (/usr/lib/modules/KVER/initramfs.img).
# Goal: osbuild <= 1.0x the hand-made time. Prints the times and the ratios.
#
# Needs root, podman, skopeo, ostree, mmdebstrap (for compose/make-base.sh's base image,
# once) and the Debian mirror (podman build runs apt). Work files under
# target/bench-image-source.
# Usage: bench/image-source.sh   (OSBUILD=path/to/osbuild to time another build of it)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/target/bench-image-source
PODMAN=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
IMAGE=localhost/osbuild-bench-image:latest
BARE=localhost/osbuild-bench-image:no-initramfs
BOOTC=localhost/osbuild-bench-image:bootc

[ "$(id -u)" = 0 ] || { echo "bench/image-source.sh must run as root" >&2; exit 1; }
for tool in podman skopeo ostree bc bsdtar; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-deps.sh" >&2; exit 1; }
done

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
build_osbuild

echo "== the images (podman build; cached by podman)" >&2
bash "$ROOT/compose/make-base.sh" >&2
podman build "${PODMAN[@]}" --tag "$IMAGE" "$ROOT/examples/container" >&2
mkdir -p "$WORK/bare" "$WORK/bootc"
printf 'FROM %s\nRUN rm /boot/initrd.img-*\n' "$IMAGE" >"$WORK/bare/Containerfile"
podman build "${PODMAN[@]}" --tag "$BARE" "$WORK/bare" >&2
printf 'FROM %s\nRUN k=$(ls /usr/lib/modules) && mv /boot/initrd.img-$k /usr/lib/modules/$k/initramfs.img\n' \
  "$IMAGE" >"$WORK/bootc/Containerfile"
podman build "${PODMAN[@]}" --tag "$BOOTC" "$WORK/bootc" >&2


by_hand() { # IMAGE REPO
  local id
  id=$(podman create "$1" /bin/true)
  ostree init --repo="$2" --mode=archive
  podman export "$id" | bsdtar -cf - --format pax --exclude 'dev/*' @- |
    ostree commit --repo="$2" --branch=bench --tree=tar=- --tar-autocreate-parents >/dev/null
  podman rm "$id" >/dev/null
}

timed() { # CMD… -> seconds
  local start
  cold
  start=$(now)
  "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  echo "$(now) - $start" | bc
}

rows=()
for image in "$IMAGE" "$BARE" "$BOOTC"; do
  rm -rf "$WORK/hand" "$WORK/osbuild" "$WORK/.osbuild.osbuild-checksums"
  echo "== $image: podman export | ostree commit" >&2
  t_hand=$(timed by_hand "$image" "$WORK/hand")
  echo "== $image: osbuild commit --image" >&2
  t_osbuild=$(timed "$OSBUILD" commit --image "containers-storage:$image" \
    --repo "$WORK/osbuild" --branch bench)
  rows+=("$image|$t_hand|$t_osbuild")
done

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
printf '\nimage: %s MB; %s cores\n\n' "$((size / 1000000))" "$(nproc)"
printf '%-44s %12s %12s %7s\n' "image" "by hand (s)" "osbuild (s)" "ratio"
for row in "${rows[@]}"; do
  IFS='|' read -r image t_hand t_osbuild <<<"$row"
  printf '%-44s %12.2f %12.2f %7.2f\n' "$image" "$t_hand" "$t_osbuild" \
    "$(echo "$t_osbuild / $t_hand" | bc -l)"
done
echo "(goal: ratio <= 1.00; on the no-initramfs row osbuild also builds the initramfs with dracut)"
