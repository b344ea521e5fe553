# Shared by the benchmarks (sourced): the release build of osbuild they time, the
# bootstrapped Debian tree several of them work on, and the timing helpers.
# Expects ROOT (the checkout) to be set.

# OSBUILD: a release build of osbuild (with the device binaries that every tree gets),
# unless the caller named another build in $OSBUILD.
build_osbuild() {
  if [ -z "${OSBUILD:-}" ]; then
    echo "== building osbuild (release)" >&2
    (cd "$ROOT" && cargo build --quiet --release -p osbuild -p osbuild-admin)
    OSBUILD=$ROOT/target/release/osbuild
  fi
}

# bench_tree DIR: the ~430 MB bookworm tree `osbuild bootstrap` makes from a minimal
# manifest, made once in DIR/tree (its package cache in DIR/cache) and reused.
bench_tree() {
  local dir=$1
  mkdir -p "$dir"
  if [ ! -d "$dir/tree" ]; then
    echo "== bootstrapping a Debian tree (once; cached in $dir)" >&2
    cat >"$dir/osbuild.toml" <<TOML
name = "bench"
[base]
distro = "debian"
suite = "bookworm"
TOML
    "$OSBUILD" bootstrap --manifest "$dir/osbuild.toml" --cache-dir "$dir/cache" \
      --output "$dir/tree.tmp" >&2
    mv "$dir/tree.tmp" "$dir/tree"
  fi
}

now() { date +%s.%N; }
# Drop the page cache, so that a timed run reads from disk as the first run of the day does.
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
