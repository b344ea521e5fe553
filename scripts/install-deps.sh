#!/usr/bin/env bash
# Installs everything osbuild needs to build, run and test on Debian 12, as root.
# Idempotent: packages already installed are left alone.
set -euo pipefail

PACKAGES=(
  # build: libostree and gpgme headers for the Rust bindings
  build-essential pkg-config libostree-dev libgpgme-dev libglib2.0-dev
  # the pipeline's external tools
  ostree mmdebstrap e2fsprogs dosfstools mtools syslinux syslinux-common extlinux
  util-linux kmod curl fdisk
  # boot loaders make-image installs (GRUB for BIOS and UEFI; Debian's signed shim and
  # GRUB for Secure Boot; systemd-boot for UEFI)
  grub-common grub-pc-bin grub-efi-amd64-bin grub-efi-amd64-signed shim-signed
  shim-helpers-amd64-signed systemd-boot-efi
  # make-image --format iso: the ISO (xorriso), its root image (squashfs-tools), isolinux
  # for BIOS (isolinux, syslinux-common); cpio for the live archive's unit test
  xorriso squashfs-tools isolinux cpio
  # bench/image-source.sh: the hand-made commit filters podman export's /dev with bsdtar
  libarchive-tools
  # signed commits in tests (a throwaway key per run)
  gnupg
  # booting images in tests and in the quick start
  qemu-system-x86 qemu-utils ovmf
  # interop tests
  openssh-server openssh-client
  # the push interop test and bench/push.sh: the real ostree-push 1.2 from PyPI in a venv
  python3-venv python3-pip python3-gi gir1.2-ostree-1.0 python3-cairo
  # ostree-serve's TLS and basic-auth tests (openssl, htpasswd) and bench/serve.sh
  openssl apache2-utils nginx wrk
  # compose/ and tests/compose.rs: podman-compose, with runc (crun fails on these machines)
  podman podman-compose runc slirp4netns uidmap
  # container images as a base: skopeo's image proxy fetches them; the tests push to a
  # real registry on loopback (Debian's docker-registry, started by the tests themselves)
  skopeo docker-registry
)

missing_packages() {
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
}
# Twice: installing one package can remove another that was there (a newer qemu-utils
# from backports goes when bookworm's qemu-system-x86 comes), so check again after.
for _ in 1 2; do
  missing_packages
  ((${#missing[@]})) || break
  echo "Installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
missing_packages
if ((${#missing[@]})); then
  echo "install-deps.sh: still missing after installing: ${missing[*]}" >&2
  exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cargo is missing: install Rust (e.g. apt-get install cargo, or rustup)" >&2
    exit 1
  fi
fi

