#!/usr/bin/env bash
# Measures `osbuild commit` against `ostree commit`, side by side in one run, on the same
# bootstrapped Debian tree (~430 MB, made once by `osbuild bootstrap` and cached):
#   1. a fresh commit into an empty archive repository, by each (goal: osbuild <= 0.7x
#      ostree's time; both fsync as libostree does by default);
#   2. a re-commit of the tree after one file changed, by each (goal: osbuild <= 0.1x its
#      own fresh commit; ostree's re-commit is printed for comparison).
# The page cache is dropped before each run, so every commit reads the tree from disk.
# Runs ROUNDS rounds (default 3) and prints each round's times, then the medians and
# their ratios.
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

# One round: each tool's fresh commit into an empty repository, then its re-commit after
# one file changed. Prints "ostree-fresh osbuild-fresh ostree-re osbuild-re" seconds.
round() {
  local t_ostree t_osbuild t_ostree_re t_osbuild_re changed=$TREE/usr/share/doc/bench-changed
  rm -rf "$WORK/ostree-repo" "$WORK/osbuild-repo" "$WORK/.osbuild-repo.osbuild-checksums"
  ostree init --repo="$WORK/ostree-repo" --mode=archive
  echo "== round $1: fresh commit: ostree commit" >&2
  t_ostree=$(timed ostree commit --repo="$WORK/ostree-repo" --branch=bench --tree=dir="$TREE")
  echo "== round $1: fresh commit: osbuild commit" >&2
  t_osbuild=$(timed "$OSBUILD" commit --repo "$WORK/osbuild-repo" --branch bench --tree "$TREE")
  date +%s.%N >"$changed"
  echo "== round $1: re-commit after one file changed: ostree commit" >&2
  t_ostree_re=$(timed ostree commit --repo="$WORK/ostree-repo" --branch=bench --tree=dir="$TREE")
  echo "== round $1: re-commit after one file changed: osbuild commit" >&2
  t_osbuild_re=$(timed "$OSBUILD" commit --repo "$WORK/osbuild-repo" --branch bench --tree "$TREE")
  rm -f "$changed"
  echo "$t_ostree $t_osbuild $t_ostree_re $t_osbuild_re"
}

# Several rounds, as this machine's speed drifts from one minute to the next; the
# ratios are those of the medians.
ROUNDS=${ROUNDS:-3}
results=()
for r in $(seq "$ROUNDS"); do
  results+=("$(round "$r")")
done
median() { # column -> the median of that column over the rounds
  printf '%s\n' "${results[@]}" | awk -v c="$1" '{print $c}' | sort -g |
    awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'
}
t_ostree=$(median 1) t_osbuild=$(median 2) t_ostree_re=$(median 3) t_osbuild_re=$(median 4)

size=$(du -sm --apparent-size "$TREE" | cut -f1)
files=$(find "$TREE" -type f | wc -l)
printf '\ntree: %s MB, %s files; %s cores; %s rounds\n\n' "$size" "$files" "$(nproc)" "$ROUNDS"
printf '%-8s %14s %14s %16s %16s\n' "round" "ostree fresh" "osbuild fresh" "ostree re-commit" "osbuild re-commit"
for r in $(seq "$ROUNDS"); do
  read -r a b c d <<<"${results[$((r - 1))]}"
  printf '%-8s %14.2f %14.2f %16.2f %16.2f   (re-commit ratio %.3f)\n' "$r" "$a" "$b" "$c" "$d" "$(echo "$d / $b" | bc -l)"
done
printf '\n%-42s %9s %8s\n' "commit (median of the rounds)" "time (s)" "ratio"
printf '%-42s %9.2f %8s\n' "fresh: ostree commit" "$t_ostree" "1.00"
printf '%-42s %9.2f %8.2f   (goal <= 0.70 of ostree)\n' "fresh: osbuild commit" "$t_osbuild" "$(echo "$t_osbuild / $t_ostree" | bc -l)"
printf '%-42s %9.2f %8.2f   (of ostree fresh)\n' "one file changed: ostree commit" "$t_ostree_re" "$(echo "$t_ostree_re / $t_ostree" | bc -l)"
printf '%-42s %9.2f %8.3f   (goal <= 0.10 of osbuild fresh)\n' "one file changed: osbuild commit" "$t_osbuild_re" "$(echo "$t_osbuild_re / $t_osbuild" | bc -l)"
