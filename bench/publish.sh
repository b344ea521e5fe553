#!/usr/bin/env bash
# Measures `osbuild publish` against `rclone sync` (Debian's rclone, what operators use)
# and `aws s3 sync` (Debian's awscli), side by side in one run: each publishes the same
# archive repository to Garage on loopback,
#   1. fresh: the repository of one commit of the bootstrapped tree (~430 MB), to an
#      empty prefix;
#   2. one file changed: the same repository after a second commit that changes one file
#      (with its static delta).
# Goal: osbuild <= 0.5x rclone's time in both. Every tool gets 8 parallel transfers and
# its fastest usual S3 flags (rclone --fast-list --checksum: one LIST, no HEAD per object
# to compare; rclone still HEADs each object it uploads, so it is also timed with
# --s3-no-head, which drops that check and makes the requests osbuild makes), and a
# Garage of its own, empty at its start (Garage stores a block once, so a tool following
# another would find the data written). Runs ROUNDS rounds (default 3) and reports, as
# medians, the time, the requests Garage served (counted in its request log) and the
# bytes sent (the sizes of the files PUT), the CPU of the tool and of Garage, and the
# time ratios to rclone.
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

# Garage stores each block once, by its hash: a tool that publishes after another to the
# same store finds the data already written and only adds references. So each tool
# publishes to a Garage of its own, started empty (one node, default configuration).
GARAGE_PID=""
stop_garage() {
  if [ -n "$GARAGE_PID" ]; then
    kill "$GARAGE_PID" 2>/dev/null || true
    wait "$GARAGE_PID" 2>/dev/null || true
  fi
  GARAGE_PID=""
}
trap stop_garage EXIT
g() { "$GARAGE" -c "$WORK/garage/garage.toml" "$@"; }
start_garage() {
  stop_garage
  rm -rf "$WORK/garage"
  mkdir -p "$WORK/garage"
  local rpc s3 key
  rpc=$(free_port) s3=$(free_port)
  cat >"$WORK/garage/garage.toml" <<TOML
metadata_dir = "$WORK/garage/meta"
data_dir = "$WORK/garage/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
TOML
  LOG=$WORK/garage/requests.log
  # Started directly (not through g), so that $! is Garage itself, whose CPU time is read.
  RUST_LOG=garage_api_common=info,garage=warn "$GARAGE" -c "$WORK/garage/garage.toml" server >"$LOG" 2>&1 &
  GARAGE_PID=$!
  for _ in $(seq 100); do
    curl -s "http://127.0.0.1:$s3" >/dev/null && break
    sleep 0.1
  done
  g layout assign -z dc1 -c 10G "$(g node id -q | cut -d@ -f1)" >/dev/null
  g layout apply --version 1 >/dev/null
  g bucket create bench >/dev/null
  key=$(g key create bench)
  AWS_ACCESS_KEY_ID=$(echo "$key" | awk '/Key ID:/ {print $3}')
  AWS_SECRET_ACCESS_KEY=$(echo "$key" | awk '/Secret key:/ {print $3}')
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  g bucket allow --read --write --owner bench --key bench >/dev/null
  ENDPOINT=http://127.0.0.1:$s3
  # rclone, configured by environment.
  export RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other \
    RCLONE_CONFIG_GARAGE_ENDPOINT=$ENDPOINT RCLONE_CONFIG_GARAGE_REGION=garage \
    RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID \
    RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY \
    RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE=true
}
export AWS_REGION=garage AWS_DEFAULT_REGION=garage
# The AWS CLI's 8 transfers.
mkdir -p "$WORK"
export AWS_CONFIG_FILE=$WORK/aws-config
printf '[default]\ns3 =\n  max_concurrent_requests = 8\n' >"$AWS_CONFIG_FILE"
unset AWS_CA_BUNDLE

# REPO1: one commit of the tree. REPO2: the same repository after a second commit that
# changes one file (with its static delta). Each run publishes REPO1 to an empty bucket
# (fresh), then REPO2 over it (one file changed).
REPO1=$WORK/repo1 REPO2=$WORK/repo2
rm -rf "$REPO1" "$REPO2" "$WORK/.repo1.osbuild-checksums" "$WORK/.repo2.osbuild-checksums"
echo "== committing the tree" >&2
"$OSBUILD" commit --repo "$REPO1" --branch bench --tree "$TREE" >/dev/null
cp -a "$REPO1" "$REPO2"
changed=$TREE/usr/share/doc/bench-publish-changed
date +%s.%N >"$changed"
echo "== committing the one-file change" >&2
"$OSBUILD" commit --repo "$REPO2" --branch bench --tree "$TREE" >/dev/null
rm -f "$changed"

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

# run NAME PREFIX REPO CMD…: time one publish of REPO; print "seconds requests bytes
# client-cpu server-cpu" (CPU seconds of the tool and of Garage during the run).
run() {
  local name=$1 prefix=$2 repo=$3 start end lines cpu0 cpu1 client
  shift 3
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
  echo "$(tail -n +"$((lines + 1))" "$LOG" | python3 "$WORK/count.py" "$repo" "$prefix" "$(echo "$end - $start" | bc)") $client $(echo "$cpu1 - $cpu0" | bc)"
}

# Every tool gets 8 parallel transfers and its fastest usual S3 flags.
osbuild_p() { run "osbuild-$1" osbuild "$2" "$OSBUILD" publish --repo "$2" --to s3://bench/osbuild --endpoint "$ENDPOINT" --jobs 8; }
rclone_p() { run "rclone-$1" rclone "$2" rclone sync --fast-list --checksum --transfers 8 --checkers 8 "$2" garage:bench/rclone; }
# rclone HEADs each object it uploaded to check it (half of its requests); --s3-no-head
# drops that check, as osbuild (which relies on the signed payload Garage verifies) does.
rclone_nohead_p() { run "rclone_nohead-$1" rclone "$2" rclone sync --fast-list --checksum --s3-no-head --transfers 8 --checkers 8 "$2" garage:bench/rclone; }
aws_p() { run "aws-$1" aws "$2" aws --endpoint-url "$ENDPOINT" s3 sync --only-show-errors "$2" s3://bench/aws; }

# Several rounds, as this machine's speed drifts from one minute to the next; the table
# gives each column's median over the rounds.
ROUNDS=${ROUNDS:-3}
TOOLS="rclone rclone_nohead aws osbuild"
rm -f "$WORK"/*.results
for r in $(seq "$ROUNDS"); do
  for tool in $TOOLS; do
    echo "== round $r: $tool, on an empty Garage" >&2
    start_garage
    "${tool}_p" fresh "$REPO1" >>"$WORK/$tool-fresh.results"
    "${tool}_p" one "$REPO2" >>"$WORK/$tool-one.results"
  done
done
stop_garage

median() { # FILE COLUMN -> the median of that column over the rounds
  awk -v c="$2" '{print $c}' "$1" | sort -g |
    awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'
}
medians() { # TOOL KIND -> "seconds requests bytes tool-cpu garage-cpu"
  local f=$WORK/$1-$2.results
  echo "$(median "$f" 1) $(median "$f" 2) $(median "$f" 3) $(median "$f" 4) $(median "$f" 5)"
}

size=$(du -sm --apparent-size "$REPO1" | cut -f1)
files=$(find "$REPO1" -type f | wc -l)
printf '\nrepository: %s MB, %s files; %s (%s) on loopback, one node, empty at each tool'"'"'s start; %s cores\n' \
  "$size" "$files" "$("$GARAGE" --version | head -n1)" "$GARAGE" "$(nproc)"
printf '\nseconds, round by round:\n'
for kind in fresh one; do
  for tool in $TOOLS; do
    printf '  %-6s %-14s %s\n' "$kind" "$tool" "$(awk '{printf "%.2f ", $1}' "$WORK/$tool-$kind.results")"
  done
done
printf '\n%-38s %9s %9s %9s %11s %11s %7s\n' "publish (medians of $ROUNDS)" "time (s)" "requests" "MB sent" "tool CPU s" "Garage CPU" "ratio"
row() { # LABEL SECONDS REQUESTS BYTES TOOL-CPU GARAGE-CPU BASE [NOTE]
  printf '%-38s %9.2f %9d %9.1f %11.1f %11.1f %7.2f   %s\n' "$1" "$2" "$3" "$(echo "$4 / 1048576" | bc -l)" "$5" "$6" "$(echo "$2 / $7" | bc -l)" "${8:-}"
}
for kind in fresh one; do
  label=$([ "$kind" = fresh ] && echo "fresh" || echo "one file changed")
  read -r r_t r_n r_b r_c r_s <<<"$(medians rclone "$kind")"
  read -r h_t h_n h_b h_c h_s <<<"$(medians rclone_nohead "$kind")"
  read -r a_t a_n a_b a_c a_s <<<"$(medians aws "$kind")"
  read -r o_t o_n o_b o_c o_s <<<"$(medians osbuild "$kind")"
  row "$label: rclone sync" "$r_t" "$r_n" "$r_b" "$r_c" "$r_s" "$r_t"
  row "$label: rclone --s3-no-head" "$h_t" "$h_n" "$h_b" "$h_c" "$h_s" "$r_t"
  row "$label: aws s3 sync" "$a_t" "$a_n" "$a_b" "$a_c" "$a_s" "$r_t"
  row "$label: osbuild publish" "$o_t" "$o_n" "$o_b" "$o_c" "$o_s" "$r_t" "(goal <= 0.50 of rclone)"
  printf '%-38s %9s %9s %9s %11s %11s %7.2f   %s\n' "  osbuild to rclone --s3-no-head" "" "" "" "" "" "$(echo "$o_t / $h_t" | bc -l)" "(the same requests)"
done
