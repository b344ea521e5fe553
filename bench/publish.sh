#!/usr/bin/env bash
# Measures `osbuild publish` against `rclone sync` (Debian's rclone, what operators use)
# and `aws s3 sync` (Debian's awscli), side by side in one run: each publishes the same
# archive repository to the same Garage on loopback, under a prefix of its own,
#   1. fresh: the repository of one commit of the bootstrapped tree (~430 MB), to an
#      empty prefix;
#   2. one file changed: the same repository after a second commit that changes one file
#      (with its static delta).
# Goal: osbuild <= 0.5x rclone's time in both. Every tool gets 8 parallel transfers and
# its fastest usual S3 flags (rclone --fast-list --checksum: no HEAD per object). Reports
# the time, the requests Garage served (counted in its request log) and the bytes sent
# (the sizes of the files PUT), and the time ratios to rclone.
#
# Needs root (the page cache is dropped before each run) and cargo (a release build of
# Garage is made once), and installs rclone and awscli if missing. Work files under
# target/bench-publish; the tree is bench/commit.sh's (target/bench-commit).
# Usage: bench/publish.sh   (OSBUILD=path/to/osbuild to time another build of it)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/target/bench-publish

[ "$(id -u)" = 0 ] || { echo "bench/publish.sh must run as root" >&2; exit 1; }
for tool in ostree bc curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-deps.sh" >&2; exit 1; }
done
# The store is a release build of Garage, as operators run it (the tests' debug build,
# from scripts/install-garage.sh, spends several times the CPU per object and would time
# the store rather than the tools). Built once per version under target/, ~25 minutes on
# 2 cores; GARAGE=path/to/garage to use another.
GARAGE_VERSION=$(sed -n 's/^GARAGE_VERSION=//p' "$ROOT/scripts/install-garage.sh")
if [ -z "${GARAGE:-}" ]; then
  GARAGE=$ROOT/target/bench-garage-$GARAGE_VERSION/bin/garage
  if ! [ -x "$GARAGE" ]; then
    echo "== building garage $GARAGE_VERSION (release; once)" >&2
    cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features \
      --features lmdb,bundled-libs --root "$ROOT/target/bench-garage-$GARAGE_VERSION" >&2
  fi
fi
[ -x "$GARAGE" ] || { echo "garage is missing: $GARAGE" >&2; exit 1; }
if ! command -v rclone >/dev/null || ! command -v aws >/dev/null; then
  echo "== installing rclone and awscli" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone awscli >&2
fi

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
build_osbuild
bench_tree "$ROOT/target/bench-commit"
TREE=$ROOT/target/bench-commit/tree

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== starting Garage on loopback" >&2
rm -rf "$WORK/garage"
mkdir -p "$WORK/garage"
RPC=$(free_port) S3=$(free_port)
cat >"$WORK/garage/garage.toml" <<EOF
metadata_dir = "$WORK/garage/meta"
data_dir = "$WORK/garage/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC"
rpc_public_addr = "127.0.0.1:$RPC"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3"
root_domain = ".s3.garage.localhost"
EOF
LOG=$WORK/garage/requests.log
g() { "$GARAGE" -c "$WORK/garage/garage.toml" "$@"; }
# Started directly (not through g), so that $! is Garage itself, whose CPU time is read.
RUST_LOG=garage_api_common=info,garage=warn "$GARAGE" -c "$WORK/garage/garage.toml" server >"$LOG" 2>&1 &
GARAGE_PID=$!
trap 'kill $GARAGE_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -s "http://127.0.0.1:$S3" >/dev/null && break
  sleep 0.1
done
g layout assign -z dc1 -c 10G "$(g node id -q | cut -d@ -f1)" >/dev/null
g layout apply --version 1 >/dev/null
g bucket create bench >/dev/null
KEY=$(g key create bench)
export AWS_ACCESS_KEY_ID=$(echo "$KEY" | awk '/Key ID:/ {print $3}')
export AWS_SECRET_ACCESS_KEY=$(echo "$KEY" | awk '/Secret key:/ {print $3}')
export AWS_REGION=garage AWS_DEFAULT_REGION=garage
g bucket allow --read --write --owner bench --key bench >/dev/null
ENDPOINT=http://127.0.0.1:$S3

# rclone and the AWS CLI, configured by environment and file, 8 transfers each.
export RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other \
  RCLONE_CONFIG_GARAGE_ENDPOINT=$ENDPOINT RCLONE_CONFIG_GARAGE_REGION=garage \
  RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID \
  RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
  RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE=true
export AWS_CONFIG_FILE=$WORK/aws-config
printf '[default]\ns3 =\n  max_concurrent_requests = 8\n' >"$AWS_CONFIG_FILE"
unset AWS_CA_BUNDLE

REPO=$WORK/repo
rm -rf "$REPO" "$WORK/.repo.osbuild-checksums"
echo "== committing the tree" >&2
"$OSBUILD" commit --repo "$REPO" --branch bench --tree "$TREE" >/dev/null

# Reads Garage's request log lines of one run on stdin; prints "seconds requests bytes",
# bytes being the sizes of the repository files PUT under the run's prefix.
cat >"$WORK/count.py" <<'PY'
import os, re, sys
repo, prefix, secs = sys.argv[1], sys.argv[2], sys.argv[3]
requests, put = 0, set()
for line in sys.stdin:
    m = re.search(r" (GET|PUT|HEAD|POST|DELETE) (/\S*)", line)
    if not m:
        continue
    requests += 1
    path = m.group(2).split("?")[0]
    if m.group(1) == "PUT":
        put.add(path.split(f"/bench/{prefix}/", 1)[-1])
sent = sum(os.path.getsize(os.path.join(repo, k)) for k in put if os.path.isfile(os.path.join(repo, k)))
print(secs, requests, sent)
PY

# CPU seconds (user + system) Garage has used so far.
garage_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$GARAGE_PID/stat"; }

# run NAME PREFIX CMD…: time one publish; print "seconds requests bytes client-cpu
# server-cpu" (CPU seconds of the tool and of Garage during the run).
run() {
  local name=$1 prefix=$2 start end lines cpu0 cpu1 client
  shift 2
  lines=$(wc -l <"$LOG")
  cold
  echo "== $name" >&2
  cpu0=$(garage_cpu)
  start=$(now)
  TIMEFORMAT='%U %S'
  { time "$@" >"$WORK/$name.out" 2>&1 || { cat "$WORK/$name.out" >&2; exit 1; }; } 2>"$WORK/$name.cpu"
  end=$(now)
  cpu1=$(garage_cpu)
  client=$(awk '{ print $1 + $2 }' "$WORK/$name.cpu")
  sleep 0.5
  echo "$(tail -n +"$((lines + 1))" "$LOG" | python3 "$WORK/count.py" "$REPO" "$prefix" "$(echo "$end - $start" | bc)") $client $(echo "$cpu1 - $cpu0" | bc)"
}

publish() { run "$1-$2" "$1" "${@:3}"; }
osbuild_p() { publish osbuild "$1" "$OSBUILD" publish --repo "$REPO" --to s3://bench/osbuild --endpoint "$ENDPOINT" --jobs 8; }
rclone_p() { publish rclone "$1" rclone sync --fast-list --checksum --transfers 8 --checkers 8 "$REPO" garage:bench/rclone; }
aws_p() { publish aws "$1" aws --endpoint-url "$ENDPOINT" s3 sync --only-show-errors "$REPO" s3://bench/aws; }

rclone_p fresh >"$WORK/result"
read -r r_fresh_t r_fresh_n r_fresh_b r_fresh_c r_fresh_s <"$WORK/result"
aws_p fresh >"$WORK/result"
read -r a_fresh_t a_fresh_n a_fresh_b a_fresh_c a_fresh_s <"$WORK/result"
osbuild_p fresh >"$WORK/result"
read -r o_fresh_t o_fresh_n o_fresh_b o_fresh_c o_fresh_s <"$WORK/result"

changed=$TREE/usr/share/doc/bench-publish-changed
date +%s.%N >"$changed"
echo "== committing the one-file change" >&2
"$OSBUILD" commit --repo "$REPO" --branch bench --tree "$TREE" >/dev/null
rm -f "$changed"
rclone_p one >"$WORK/result"
read -r r_one_t r_one_n r_one_b r_one_c r_one_s <"$WORK/result"
aws_p one >"$WORK/result"
read -r a_one_t a_one_n a_one_b a_one_c a_one_s <"$WORK/result"
osbuild_p one >"$WORK/result"
read -r o_one_t o_one_n o_one_b o_one_c o_one_s <"$WORK/result"

size=$(du -sm --apparent-size "$REPO" | cut -f1)
files=$(find "$REPO" -type f | wc -l)
printf '\nrepository: %s MB, %s files; %s (%s) on loopback, one node; %s cores\n\n' "$size" "$files" \
  "$("$GARAGE" --version | head -n1)" "$GARAGE" "$(nproc)"
printf '%-32s %9s %9s %9s %11s %11s %7s\n' "publish" "time (s)" "requests" "MB sent" "tool CPU s" "Garage CPU" "ratio"
row() { # LABEL SECONDS REQUESTS BYTES TOOL-CPU GARAGE-CPU BASE [NOTE]
  printf '%-32s %9.2f %9d %9.1f %11.1f %11.1f %7.2f   %s\n' "$1" "$2" "$3" "$(echo "$4 / 1048576" | bc -l)" "$5" "$6" "$(echo "$2 / $7" | bc -l)" "${8:-}"
}
row "fresh: rclone sync" "$r_fresh_t" "$r_fresh_n" "$r_fresh_b" "$r_fresh_c" "$r_fresh_s" "$r_fresh_t"
row "fresh: aws s3 sync" "$a_fresh_t" "$a_fresh_n" "$a_fresh_b" "$a_fresh_c" "$a_fresh_s" "$r_fresh_t"
row "fresh: osbuild publish" "$o_fresh_t" "$o_fresh_n" "$o_fresh_b" "$o_fresh_c" "$o_fresh_s" "$r_fresh_t" "(goal <= 0.50 of rclone)"
row "one file changed: rclone sync" "$r_one_t" "$r_one_n" "$r_one_b" "$r_one_c" "$r_one_s" "$r_one_t"
row "one file changed: aws s3 sync" "$a_one_t" "$a_one_n" "$a_one_b" "$a_one_c" "$a_one_s" "$r_one_t"
row "one file changed: osbuild" "$o_one_t" "$o_one_n" "$o_one_b" "$o_one_c" "$o_one_s" "$r_one_t" "(goal <= 0.50 of rclone)"
