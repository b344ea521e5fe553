#!/usr/bin/env bash
# Makes the base image of compose/Containerfile without a registry: a minimal Debian 12
# rootfs made with mmdebstrap, holding what `osbuild serve` needs at run time, imported
# into podman with `podman import`.
#
#   bash compose/make-base.sh [--force] [--image NAME] [--mirror URL]
#
# The image is called localhost/osbuild-base:bookworm unless --image names another (then
# set OSBUILD_BASE to it for compose.yaml). $MIRROR is the default of --mirror.
# Idempotent: nothing is done when the image exists, unless --force.
# Needs root (mmdebstrap's root mode), mmdebstrap and podman.
set -euo pipefail

image=localhost/osbuild-base:bookworm
mirror="${MIRROR:-}"
force=0
while (($#)); do
  case "$1" in
    --force) force=1 ;;
    --image) image="${2:?--image needs a name}"; shift ;;
    --mirror) mirror="${2:?--mirror needs a URL}"; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "make-base.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

for tool in mmdebstrap podman; do
  command -v "$tool" >/dev/null || {
    echo "make-base.sh: $tool is missing (apt-get install $tool, or bash scripts/install-deps.sh)" >&2
    exit 1
  }
done

# One at a time: two runs at once would both build and race to tag the image (the test
# suite's compose and container tests may start it together).
lock="${TMPDIR:-/tmp}/osbuild-make-base.lock"
exec 9>"$lock"
flock 9

if ((!force)) && podman image exists "$image"; then
  echo "make-base.sh: $image exists; nothing to do (--force rebuilds it)"
  exit 0
fi

# What the server needs at run time: libostree and gpgme (the binary links them), ca-certificates
# for HTTPS, and the ostree CLI, with which the entrypoint creates an empty repository.
packages=libostree-1-1,libgpgme11,ostree,ca-certificates

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "make-base.sh: bootstrapping Debian bookworm ($packages)"
# --variant=apt: the Essential packages and apt, so a derived image can still apt-get install.
# mmdebstrap leaves no package lists or caches behind.
mmdebstrap --mode=root --variant=apt --format=tar \
  --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  bookworm "$work/rootfs.tar" ${mirror:+"$mirror"} \
  || { echo "make-base.sh: mmdebstrap failed" >&2; exit 1; }

echo "make-base.sh: importing it as $image"
podman import \
  --change 'CMD ["/bin/bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --message "osbuild compose base: Debian bookworm with libostree, made by compose/make-base.sh" \
  "$work/rootfs.tar" "$image" \
  || { echo "make-base.sh: podman import of $work/rootfs.tar failed" >&2; exit 1; }
echo "make-base.sh: $image ready"
