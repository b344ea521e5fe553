#!/usr/bin/env bash
# Builds Garage, the S3 store the publishing tests run on loopback (crates.io; not in
# Debian), into ~/.cargo/bin. Built once and reused while its version matches: a debug
# build with LMDB only, which the tests need, without debug info. scripts/test.sh runs it
# beside its own build, whose last crates leave a core idle.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
GARAGE_VERSION=2.5.0
garage_bin="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
# A cargo-installed build says `garage cargo:2.5.0 [features: …]`; a release, `garage v2.5.0`.
if ! "$garage_bin" --version 2>/dev/null | grep -Eq "(v|cargo:)$GARAGE_VERSION( |$)"; then
  echo "Building garage $GARAGE_VERSION (cargo install; once)"
  # Debug info is most of a debug build's linking and its binary's size; the tests never
  # need it.
  CARGO_PROFILE_DEV_DEBUG=0 cargo install garage --version "$GARAGE_VERSION" --locked --debug \
    --no-default-features --features lmdb,bundled-libs --quiet
fi
