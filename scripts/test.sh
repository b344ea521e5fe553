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
# Garage (for the S3 tests) builds beside the lints and the build below: each one's last
# crates build one at a time and leave a core idle. Its log is shown if it fails.
mkdir -p target
bash scripts/install-garage.sh > target/install-garage.log 2>&1 &
garage=$!
trap 'kill "$garage" 2>/dev/null || true' EXIT
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# libtest's JSON events carry each test's time, and with --show-output passed tests' output
# (the report picks the boot matrix's row times from it); RUSTC_BOOTSTRAP lets a stable
# toolchain accept the unstable flags. stderr is merged so the report knows which binary
# runs and which tests were skipped; everything else passes through unchanged.
set +e
# Every test binary and every program first, in one build that the runs below share
# (cargo test finds nothing to compile after it). The end-to-end suite installs the
# fortune teller into SampleOS, and every tree gets osbuild-admin's boot menu generator:
# built here with the workspace's features, not with `-p`, which would build their
# dependencies again with other features.
RUSTC_BOOTSTRAP=1 cargo build --workspace --all-targets
built=$?
if ! wait "$garage"; then
    echo "test.sh: building garage failed:" >&2
    cat target/install-garage.log >&2
    built=1
fi
logs=target/test-logs
rm -rf "$logs" && mkdir -p "$logs"
# The end-to-end binary (two VMs at a time, about fifty minutes) runs beside everything
# else: the other tests use about one core of two for six minutes, waiting on servers,
# pushes and kills, and the first end-to-end tests leave a core idle while they
# bootstrap their tree. Each run's stream is saved for the report and shown as it comes.
tests() {
    local name=$1
    shift
    RUSTC_BOOTSTRAP=1 cargo test --no-fail-fast "$@" -- --test-threads=2 --show-output \
        -Z unstable-options --format json --report-time 2>&1 |
        tee "$logs/$name.jsonl" | python3 scripts/test-times.py --live
    echo "${PIPESTATUS[0]}" > "$logs/$name.status"
}
# The same workspace-wide selection for every run, so that features resolve as for the
# build above and nothing is compiled twice.
others=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        if "test" in t["kind"] and t["name"] != "e2e":
            print("--test", t["name"])')
tests e2e --workspace --test e2e &
e2e=$!
# shellcheck disable=SC2086 # one word per flag and name
tests rest --workspace --lib --bins $others
tests doc --workspace --doc
wait "$e2e"
python3 scripts/test-times.py --report "$logs"/{rest,doc,e2e}.jsonl
reported=$?
cargo_status=$built
for f in "$logs"/*.status; do
    [ "$(cat "$f")" -eq 0 ] || cargo_status=1
done
set -e
# Signing in tests starts a gpg-agent per throwaway GPG home (osbuild_testing::gpg): stop
# them with their homes.
for home in target/tmp/gpg-*/home*; do
    [ -d "$home" ] && gpgconf --homedir "$home" --kill gpg-agent || true
done
rm -rf target/tmp/gpg-*
if [ "$cargo_status" -ne 0 ] || [ "$reported" -ne 0 ]; then
    echo "test.sh: tests failed (cargo test exit $cargo_status, report exit $reported) after ${SECONDS}s" >&2
    exit 1
fi
echo "test.sh: passed in ${SECONDS}s"
