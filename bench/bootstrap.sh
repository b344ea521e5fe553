#!/usr/bin/env bash
# Measures what the build cache saves: `osbuild bootstrap --manifest` cold (an empty cache
# directory: every package is downloaded, mmdebstrap and dracut run) and warm (the same
# manifest with only the host name and a file changed: the cached base is copied), one
# after the other in one run, and prints both times and the ratio warm/cold (the goal is
# at most 10%).
#
# Needs root, mmdebstrap and access to the Debian mirror; the cold build downloads about
# 150 MB. Work files (cache, trees) under target/bench-bootstrap, removed at the start.
# Usage: bench/bootstrap.sh   (OSBUILD=path/to/osbuild to time another build of it)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/target/bench-bootstrap

[ "$(id -u)" = 0 ] || { echo "bench/bootstrap.sh must run as root (mmdebstrap --mode=root, chroot)" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }

if [ -z "${OSBUILD:-}" ]; then
  echo "== building osbuild" >&2
  (cd "$ROOT" && cargo build --quiet --bin osbuild)
  OSBUILD=$ROOT/target/debug/osbuild
fi

rm -rf "$WORK"
mkdir -p "$WORK/os"

# One manifest, two variants that differ only in what is applied on top of the base.
manifest() { # HOSTNAME MOTD
  cat >"$WORK/os/osbuild.toml" <<EOF
name = "bench"
hostname = "$1"

[base]
distro = "debian"
suite = "bookworm"
mirror = "http://deb.debian.org/debian"

[[files]]
path = "/etc/motd"
content = "$2\n"
EOF
}

# Seconds (with decimals) that `osbuild bootstrap` takes into OUTPUT.
timed_bootstrap() { # OUTPUT
  local start end
  start=$(date +%s.%N)
  "$OSBUILD" bootstrap --manifest "$WORK/os/osbuild.toml" --cache-dir "$WORK/cache" \
    --output "$1" >&2
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

echo "== cold: empty cache $WORK/cache" >&2
manifest bench-cold "cold build"
cold=$(timed_bootstrap "$WORK/cold")

echo "== warm: host name and /etc/motd changed" >&2
manifest bench-warm "warm build"
warm=$(timed_bootstrap "$WORK/warm")

# Both trees really are what their manifests say.
grep -qx bench-cold "$WORK/cold/usr/etc/hostname"
grep -qx bench-warm "$WORK/warm/usr/etc/hostname"
grep -qx "warm build" "$WORK/warm/usr/etc/motd"

printf '%-6s %8s\n' case seconds
printf '%-6s %8.1f\n' cold "$cold" warm "$warm"
printf 'warm/cold = %.1f%% (goal: <= 10%%)\n' "$(echo "100 * $warm / $cold" | bc -l)"
du -sh "$WORK/cache/packages" "$WORK/cache/base" | sed 's/^/cache: /'
