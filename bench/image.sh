#!/usr/bin/env bash
# Measures `osbuild make-image` against the seed's way of making the same image, side by
# side on one commit in one run: a loop device over the partition, mkfs, mount, `ostree
# admin init-fs/os-init`, `ostree pull`, `ostree admin deploy`, extlinux, unmount (the
# flow an OSTree user scripts by hand). Both make a 3 GiB syslinux/BIOS/MBR image from the
# same local repository; osbuild's default (GRUB on a hybrid BIOS+UEFI GPT disk, size
# auto) is timed too. Prints each time and image size (allocated and apparent) and the
# ratios to the seed's. Goal: make-image at most 0.5x the seed's time. It also prints how
# much of the seed's time is its `ostree pull` + `ostree admin deploy`, which make-image does
# as well (84-88 % on these machines, so the goal is out of reach of any flow that deploys).
#
# Needs root, mmdebstrap (the first run bootstraps a small tree; later runs reuse the
# cache), ostree, extlinux. Work files under target/bench-image.
# Usage: bench/image.sh   (OSBUILD=path/to/osbuild to time another build of it)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/target/bench-image
REF=bench/bookworm/x86_64
SIZE=3G

[ "$(id -u)" = 0 ] || { echo "bench/image.sh must run as root (loop devices, mounts)" >&2; exit 1; }
for tool in mmdebstrap ostree extlinux losetup sfdisk bc; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-deps.sh" >&2; exit 1; }
done

if [ -z "${OSBUILD:-}" ]; then
  echo "== building osbuild" >&2
  (cd "$ROOT" && cargo build --quiet --release -p osbuild -p osbuild-admin)
  OSBUILD=$ROOT/target/release/osbuild
fi

mkdir -p "$WORK"
REPO=$WORK/repo
if ! ostree --repo="$REPO" rev-parse "$REF" >/dev/null 2>&1; then
  echo "== bootstrapping and committing a small tree (once; cached in $WORK)" >&2
  rm -rf "$REPO" "$WORK/tree"
  cat >"$WORK/osbuild.toml" <<EOF
name = "bench"
ref = "$REF"
[base]
distro = "debian"
suite = "bookworm"
EOF
  "$OSBUILD" commit --manifest "$WORK/osbuild.toml" --repo "$REPO" --cache-dir "$WORK/cache" >&2
fi
URL=file://$REPO

now() { date +%s.%N; }
size_of() { # IMAGE -> "allocated_MiB apparent_MiB"
  echo "$(( $(du -k "$1" | cut -f1) / 1024 )) $(( $(stat -c %s "$1") / 1048576 ))"
}

# Whatever happens, leave no mount and no loop device of the seed flow behind.
mnt="" loop=""
undo_seed() {
  if [ -n "$mnt" ]; then umount "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true; fi
  if [ -n "$loop" ]; then losetup -d "$loop" 2>/dev/null || true; fi
  mnt="" loop=""
}
trap undo_seed EXIT

# The seed's flow, scripted as its README does it.
seed() { # IMAGE
  local img=$1
  rm -f "$img"
  truncate -s "$SIZE" "$img"
  echo 'start=2048, type=83, bootable' | sfdisk -q "$img"
  loop=$(losetup --find --show --offset $((2048 * 512)) "$img")
  mnt=$(mktemp -d)
  mkfs.ext4 -q -L osbuild-root -O ^64bit "$loop"
  mount "$loop" "$mnt"
  ostree admin init-fs "$mnt"
  ostree admin os-init --sysroot="$mnt" debian
  ostree --repo="$mnt/ostree/repo" remote add --no-gpg-verify origin "$URL"
  ostree --repo="$mnt/ostree/repo" config set sysroot.bootloader syslinux
  ostree --repo="$mnt/ostree/repo" config set sysroot.bootprefix true
  mkdir -p "$mnt/boot/loader.0" "$mnt/boot/syslinux"
  : >"$mnt/boot/loader.0/syslinux.cfg"
  ln -s loader.0 "$mnt/boot/loader"
  ln -s ../loader/syslinux.cfg "$mnt/boot/syslinux/syslinux.cfg"
  local t0
  t0=$(now)
  ostree --repo="$mnt/ostree/repo" pull origin "$REF" >/dev/null
  ostree admin deploy --sysroot="$mnt" --os=debian --karg=root=LABEL=osbuild-root \
    --karg=rw --karg=console=ttyS0,115200 "origin:$REF" >/dev/null
  # The part every flow that deploys the commit does, make-image's included.
  echo "$(now) - $t0" | bc >"$WORK/seed-pull-deploy.time"
  extlinux --install "$mnt/boot/syslinux" >/dev/null 2>&1
  dd if=/usr/lib/syslinux/mbr/mbr.bin of="$img" bs=440 count=1 conv=notrunc status=none
  sync
  undo_seed
}

osbuild_image() { # IMAGE [FLAGS…]
  local img=$1
  shift
  rm -f "$img"
  "$OSBUILD" make-image --url "$URL" --branch "$REF" --output "$img" "$@" >/dev/null 2>&1
}

run_timed() { # NAME CMD…
  local name=$1 start end
  shift
  start=$(now)
  "$@" >&2
  end=$(now)
  echo "$end - $start" | bc
}

echo "== seed flow (loop device, mount, ostree admin deploy, extlinux)" >&2
t_seed=$(run_timed seed seed "$WORK/seed.img")
echo "== osbuild make-image --bootloader syslinux --firmware bios --size $SIZE" >&2
t_sys=$(run_timed osbuild osbuild_image "$WORK/osbuild-syslinux.img" --bootloader syslinux --firmware bios --size "$SIZE")
echo "== osbuild make-image (defaults: grub, hybrid, size auto)" >&2
t_def=$(run_timed osbuild osbuild_image "$WORK/osbuild-default.img")

read -r a_seed p_seed <<<"$(size_of "$WORK/seed.img")"
read -r a_sys p_sys <<<"$(size_of "$WORK/osbuild-syslinux.img")"
read -r a_def p_def <<<"$(size_of "$WORK/osbuild-default.img")"

printf '\n%-44s %9s %14s %13s %10s\n' "image" "time (s)" "allocated MiB" "apparent MiB" "time ratio"
printf '%-44s %9.1f %14s %13s %10s\n' "seed flow, syslinux/BIOS/MBR $SIZE" "$t_seed" "$a_seed" "$p_seed" "1.00"
printf '%-44s %9.1f %14s %13s %10.2f\n' "make-image, syslinux/BIOS/MBR $SIZE" "$t_sys" "$a_sys" "$p_sys" "$(echo "$t_sys / $t_seed" | bc -l)"
printf '%-44s %9.1f %14s %13s %10.2f\n' "make-image, defaults (GRUB hybrid, auto)" "$t_def" "$a_def" "$p_def" "$(echo "$t_def / $t_seed" | bc -l)"
t_floor=$(cat "$WORK/seed-pull-deploy.time")
printf '\nof the seed flow, ostree pull + ostree admin deploy alone: %.1f s (%.0f%%, ratio %.2f),\n' \
  "$t_floor" "$(echo "100 * $t_floor / $t_seed" | bc -l)" "$(echo "$t_floor / $t_seed" | bc -l)"
echo "work make-image does too (through libostree, into its scratch sysroot)"
rm -f "$WORK"/*.img "$WORK/seed-pull-deploy.time"
