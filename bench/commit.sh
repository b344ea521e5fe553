#!/usr/bin/env bash
# Measures `osbuild commit` against `ostree commit`, side by side in one run, on the same
# bootstrapped Debian tree (~430 MB, made once by `osbuild bootstrap` and cached):
#   1. a fresh commit into an empty archive repository, by each (goal: osbuild <= 0.7x
#      ostree's time; both fsync as libostree does by default);
#   2. a re-commit of the tree after one file changed, by each (goal: osbuild <= 0.1x its
#      own fresh commit; ostree's re-commit is printed for comparison).
# The page cache is dropped before each run, so every commit reads the tree from disk.
# Prints the times and the ratios.
#
# Needs root, mmdebstrap (first run only) and ostree. Work files under target/bench-commit.
# Usage: bench/commit.sh   (OSBUILD=path/to/osbuild to time another build of it)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/target/bench-commit

[ "$(id -u)" = 0 ] || { echo "bench/commit.sh must run as root (mmdebstrap --mode=root)" >&2; exit 1; }
for tool in ostree bc; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-deps.sh" >&2; exit 1; }
done

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
build_osbuild
bench_tree "$WORK"
TREE=$WORK/tree

timed() { # CMD… -> seconds
  local start
  cold
  start=$(now)
  "$@" >/dev/null 2>&1
  echo "$(now) - $start" | bc
}

rm -rf "$WORK/ostree-repo" "$WORK/osbuild-repo" "$WORK/.osbuild-repo.osbuild-checksums"
ostree init --repo="$WORK/ostree-repo" --mode=archive
echo "== fresh commit: ostree commit" >&2
t_ostree=$(timed ostree commit --repo="$WORK/ostree-repo" --branch=bench --tree=dir="$TREE")
echo "== fresh commit: osbuild commit" >&2
t_osbuild=$(timed "$OSBUILD" commit --repo "$WORK/osbuild-repo" --branch bench --tree "$TREE")

# One file changed; the content differs each run, so there is always a new commit.
changed=$TREE/usr/share/doc/bench-changed
date +%s.%N >"$changed"
echo "== re-commit after one file changed: ostree commit" >&2
t_ostree_re=$(timed ostree commit --repo="$WORK/ostree-repo" --branch=bench --tree=dir="$TREE")
echo "== re-commit after one file changed: osbuild commit" >&2
t_osbuild_re=$(timed "$OSBUILD" commit --repo "$WORK/osbuild-repo" --branch bench --tree "$TREE")
rm -f "$changed"

size=$(du -sm --apparent-size "$TREE" | cut -f1)
files=$(find "$TREE" -type f | wc -l)
printf '\ntree: %s MB, %s files; %s cores\n\n' "$size" "$files" "$(nproc)"
printf '%-42s %9s %8s\n' "commit" "time (s)" "ratio"
printf '%-42s %9.2f %8s\n' "fresh: ostree commit" "$t_ostree" "1.00"
printf '%-42s %9.2f %8.2f   (goal <= 0.70 of ostree)\n' "fresh: osbuild commit" "$t_osbuild" "$(echo "$t_osbuild / $t_ostree" | bc -l)"
printf '%-42s %9.2f %8.2f   (of ostree fresh)\n' "one file changed: ostree commit" "$t_ostree_re" "$(echo "$t_ostree_re / $t_ostree" | bc -l)"
printf '%-42s %9.2f %8.2f   (goal <= 0.10 of osbuild fresh)\n' "one file changed: osbuild commit" "$t_osbuild_re" "$(echo "$t_osbuild_re / $t_osbuild" | bc -l)"
