#!/usr/bin/env bash
# The main job: install what is needed, build osbuild, build the example OS image from
# scratch (bootstrap -> commit -> serve -> make-image) and boot it in qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release
OSBUILD=$PWD/target/release/osbuild
OUT=${OSBUILD_OUT:-$PWD/target/example}
BRANCH=debian/bookworm/x86_64
mkdir -p "$OUT"

if [ ! -d "$OUT/rootfs" ]; then
  "$OSBUILD" bootstrap --output "$OUT/rootfs" --overlay examples/overlay
fi
"$OSBUILD" commit --repo "$OUT/repo" --branch "$BRANCH" --tree "$OUT/rootfs" \
  --subject "example OS" --version "$(date +%Y%m%d.%H%M)"

PORT=${OSBUILD_PORT:-8080}
"$OSBUILD" serve --repo "$OUT/repo" --http "127.0.0.1:$PORT" --access-log off &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

rm -f "$OUT/disk.img"
"$OSBUILD" make-image --url "http://127.0.0.1:$PORT/repo/" --remote-url "http://10.0.2.2:$PORT/repo/" \
  --branch "$BRANCH" --output "$OUT/disk.img" --size 4G

echo "Booting $OUT/disk.img in qemu (TCG); waiting for the OS to report its commit..."
LOG=$OUT/serial.log
rm -f "$LOG"
timeout 600 qemu-system-x86_64 -machine q35 -m 1024 -smp 2 -nographic -no-reboot \
  -drive "file=$OUT/disk.img,format=raw,if=virtio" -nic user,model=virtio-net-pci \
  -serial "file:$LOG" -monitor none -display none &
QEMU=$!
trap 'kill $SERVER $QEMU 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  if grep -q "OSBUILD-BOOTED" "$LOG" 2>/dev/null; then break; fi
  kill -0 $QEMU 2>/dev/null || break
  sleep 1
done
if grep -a "OSBUILD-BOOTED" "$LOG"; then
  echo
  echo "The example OS booted. Image: $OUT/disk.img"
  echo "Boot it yourself: qemu-system-x86_64 -m 1024 -nographic -drive file=$OUT/disk.img,format=raw,if=virtio -nic user,model=virtio-net-pci"
else
  echo "The example OS did not report within the timeout; serial log: $LOG" >&2
  tail -40 "$LOG" >&2 || true
  exit 1
fi
