#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests, and the
# end-to-end suite that boots images in qemu. Installs what it needs first. Ends with a
# table of every test's wall time, slowest first (also when tests fail; then it exits
# non-zero after the table).
#
# With CI=true (.ci/run sets it) a test whose tool is missing fails; otherwise it is
# reported as skipped, by name.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# libtest's JSON events carry each test's time, and with --show-output passed tests' output
# (the report picks the boot matrix's row times from it); RUSTC_BOOTSTRAP lets a stable
# toolchain accept the unstable flags. stderr is merged so the report knows which binary
# runs and which tests were skipped; everything else passes through unchanged.
set +e
# The end-to-end suite installs the fortune teller into SampleOS, and every tree gets the
# boot menu generator (osbuild-admin's osbuild-boot-menu).
cargo build -p fortuneteller -p osbuild-admin
RUSTC_BOOTSTRAP=1 cargo test --workspace --no-fail-fast -- --test-threads=2 --show-output \
    -Z unstable-options --format json --report-time 2>&1 | python3 scripts/test-times.py
status=("${PIPESTATUS[@]}")
set -e
# Signing in tests starts a gpg-agent per throwaway GPG home (osbuild_testing::gpg): stop
# them with their homes.
for home in target/tmp/gpg-*/home*; do
    [ -d "$home" ] && gpgconf --homedir "$home" --kill gpg-agent || true
done
rm -rf target/tmp/gpg-*
if [ "${status[0]}" -ne 0 ] || [ "${status[1]}" -ne 0 ]; then
    echo "test.sh: tests failed (cargo test exit ${status[0]}, report exit ${status[1]})" >&2
    exit 1
fi
