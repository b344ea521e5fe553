#!/usr/bin/env bash
# Benchmarks `osbuild serve` against nginx serving the same archive repository, side by
# side in one run, on loopback ports only:
#   1. wrk, 64 connections, 2 threads: GETs cycling through small object files (req/s);
#   2. the wall time of a full `ostree pull` into a fresh repository.
# Prints both and the ratios osbuild/nginx (req/s: higher is better; time: lower is), for
# osbuild as it ships and with its hot-file cache off (`--cache-size 0`), to show what the
# cache is worth.
#
# Environment: SMALL_FILES (4000), BIG_FILES (8), DURATION (10s), ROUNDS (2 wrk runs per
# server, best kept), PULLS (3, median kept), BENCH_DIR (target/bench/serve),
# BENCH_TREE (a directory to commit instead of the generated tree, e.g. /usr),
# ACCESS_LOG (on: both servers write access logs to files; off: neither does).
# Needs nginx, wrk, ostree, python3 and cargo (scripts/install-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$PWD
WORK=${BENCH_DIR:-$ROOT_DIR/target/bench/serve}
SMALL_FILES=${SMALL_FILES:-4000}
BIG_FILES=${BIG_FILES:-8}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-2}
PULLS=${PULLS:-3}
ACCESS_LOG=${ACCESS_LOG:-on}
BRANCH=bench/x86_64

for tool in nginx wrk ostree python3 cargo curl; do
  command -v "$tool" >/dev/null || { echo "bench/serve.sh: $tool is missing (run scripts/install-deps.sh)" >&2; exit 1; }
done
mkdir -p "$WORK"

echo "== building osbuild (release)" >&2
cargo build --release -q -p osbuild
OSBUILD=$ROOT_DIR/target/release/osbuild

# --- the repository, rebuilt only when its recipe changes -------------------------------
REPO=$WORK/repo
recipe="small=$SMALL_FILES big=$BIG_FILES tree=${BENCH_TREE:-generated}"
if [ "$(cat "$WORK/recipe" 2>/dev/null)" != "$recipe" ] || [ ! -d "$REPO" ]; then
  echo "== building the repository ($recipe)" >&2
  rm -rf "$REPO" "$WORK/tree" "$WORK/recipe"
  if [ -n "${BENCH_TREE:-}" ]; then
    TREE=$BENCH_TREE
  else
    TREE=$WORK/tree
    # Deterministic content: small files of 64 B to 16 KiB (log-uniform, half text, half
    # noise, so zlib leaves them mid-sized), and big incompressible files of 1-8 MiB.
    python3 - "$TREE" "$SMALL_FILES" "$BIG_FILES" <<'PY'
import os, random, sys
root, small, big = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
words = [b"ostree", b"debian", b"usr", b"lib", b"share", b"kernel", b"systemd", b"config"]
for i in range(small):
    d = os.path.join(root, "usr", "share", f"d{i % 97:02d}", f"e{i % 13}")
    os.makedirs(d, exist_ok=True)
    size = int(2 ** rng.uniform(6, 14))
    text = b" ".join(rng.choice(words) for _ in range(size // 14 + 1))[: size // 2]
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(text + rng.randbytes(size - len(text)))
os.makedirs(os.path.join(root, "usr", "lib", "big"), exist_ok=True)
for i in range(big):
    with open(os.path.join(root, "usr", "lib", "big", f"b{i}"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1, 8) << 20))
PY
  fi
  ostree init --mode=archive --repo="$REPO"
  ostree commit --repo="$REPO" --branch="$BRANCH" --tree=dir="$TREE" >/dev/null
  ostree summary -u --repo="$REPO"
  echo "$recipe" >"$WORK/recipe"
fi
# Small objects: file objects up to 16 KiB, as URL paths, in a fixed shuffled order.
(cd "$REPO" && find objects -name '*.filez' -size -16k) |
  python3 -c 'import random,sys; p=sys.stdin.read().split(); random.Random(1).shuffle(p); print("\n".join("/repo/"+x for x in p))' \
  >"$WORK/objects.txt"
nobjects=$(find "$REPO/objects" -type f | wc -l)
nsmall=$(wc -l <"$WORK/objects.txt")
size=$(du -sm "$REPO" | cut -f1)

# --- the two servers ---------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
OS_PORT=$(free_port)
NC_PORT=$(free_port)
NG_PORT=$(free_port)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

"$OSBUILD" serve --repo "$REPO" --http "127.0.0.1:$OS_PORT" --access-log "$ACCESS_LOG" \
  >"$WORK/osbuild-access.log" 2>"$WORK/osbuild.err" &
pids+=($!)
"$OSBUILD" serve --repo "$REPO" --http "127.0.0.1:$NC_PORT" --access-log "$ACCESS_LOG" \
  --cache-size 0 >"$WORK/osbuild-nocache-access.log" 2>"$WORK/osbuild-nocache.err" &
pids+=($!)

NG=$WORK/nginx
rm -rf "$NG"
mkdir -p "$NG/tmp"
sed -e "s|@PREFIX@|$NG|g" -e "s|@ROOT@|$REPO|g" -e "s|@PORT@|$NG_PORT|g" \
  bench/nginx.conf >"$NG/nginx.conf"
if [ "$ACCESS_LOG" = off ]; then
  sed -i "s|access_log .*;|access_log off;|" "$NG/nginx.conf"
fi
nginx -p "$NG" -c "$NG/nginx.conf" 2>"$NG/stderr" &
pids+=($!)

for port in "$OS_PORT" "$NC_PORT" "$NG_PORT"; do
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/repo/config" && break
    sleep 0.1
  done
  curl -sf -o /dev/null "http://127.0.0.1:$port/repo/config" ||
    { echo "server on port $port did not start:" >&2; cat "$WORK"/osbuild*.err "$NG/stderr" "$NG/error.log" >&2; exit 1; }
done
# Both must serve the same bytes.
probe=$(head -1 "$WORK/objects.txt")
cmp <(curl -sf "http://127.0.0.1:$OS_PORT$probe") <(curl -sf "http://127.0.0.1:$NG_PORT$probe")
cmp <(curl -sf "http://127.0.0.1:$NC_PORT$probe") <(curl -sf "http://127.0.0.1:$NG_PORT$probe")

# --- 1. wrk on small objects ---------------------------------------------------------------
wrk_rps() { # port -> best req/s over ROUNDS runs; fails on any non-2xx answer or socket error
  local port=$1 best=0 out rps
  for _ in $(seq "$ROUNDS"); do
    out=$(OBJECTS="$WORK/objects.txt" wrk -c64 -t2 -d"$DURATION" -s bench/objects.lua "http://127.0.0.1:$port")
    echo "$out" >>"$WORK/wrk-$port.txt"
    if grep -qE "Non-2xx|Socket errors" <<<"$out"; then
      echo "wrk against port $port saw errors:" >&2
      echo "$out" >&2
      exit 1
    fi
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    best=$(python3 -c "print(max($best, $rps))")
  done
  echo "$best"
}
echo "== wrk: $nsmall small objects, -c64 -t2 -d$DURATION, best of $ROUNDS" >&2
rm -f "$WORK"/wrk-*.txt
# A short warm-up of both, so the page cache and the servers start equal.
for port in "$OS_PORT" "$NC_PORT" "$NG_PORT"; do
  OBJECTS="$WORK/objects.txt" wrk -c64 -t2 -d2s -s bench/objects.lua "http://127.0.0.1:$port" >/dev/null
done
os_rps=$(wrk_rps "$OS_PORT")
nc_rps=$(wrk_rps "$NC_PORT")
ng_rps=$(wrk_rps "$NG_PORT")

# --- 2. full ostree pull -------------------------------------------------------------------
pull_time() { # port -> median seconds over PULLS pulls into fresh repositories
  local port=$1 times=() client t0 t1
  for i in $(seq "$PULLS"); do
    client=$WORK/client-$port-$i
    rm -rf "$client"
    ostree init --mode=archive --repo="$client"
    # The client's fsyncs would measure the disk, not the server.
    ostree config --repo="$client" set core.fsync false
    ostree remote add --repo="$client" --no-gpg-verify origin "http://127.0.0.1:$port/repo/"
    t0=$(date +%s.%N)
    ostree pull --repo="$client" origin "$BRANCH" >/dev/null
    t1=$(date +%s.%N)
    [ "$(ostree rev-parse --repo="$client" origin:$BRANCH)" = "$(ostree rev-parse --repo="$REPO" $BRANCH)" ]
    rm -rf "$client"
    times+=("$(python3 -c "print($t1 - $t0)")")
  done
  python3 -c "import statistics,sys; print(round(statistics.median(map(float, sys.argv[1:])), 3))" "${times[@]}"
}
echo "== ostree pull: $nobjects objects, $size MiB, median of $PULLS" >&2
os_pull=$(pull_time "$OS_PORT")
nc_pull=$(pull_time "$NC_PORT")
ng_pull=$(pull_time "$NG_PORT")

# --- report --------------------------------------------------------------------------------
python3 - "$os_rps" "$nc_rps" "$ng_rps" "$os_pull" "$nc_pull" "$ng_pull" "$nobjects" "$size" "$nsmall" "$ACCESS_LOG" <<'PY'
import sys
os_rps, nc_rps, ng_rps, os_pull, nc_pull, ng_pull = map(float, sys.argv[1:7])
nobjects, size, nsmall, log = sys.argv[7:]
print(f"repository: {nobjects} objects, {size} MiB; wrk over {nsmall} small objects; access logs {log}")
print(f"{'':32}{'osbuild':>10}{'no cache':>10}{'nginx':>10}{'osbuild/nginx':>15}{'no cache/nginx':>16}")
print(f"{'wrk -c64 small objects (req/s)':32}{os_rps:>10.0f}{nc_rps:>10.0f}{ng_rps:>10.0f}"
      f"{os_rps / ng_rps:>15.2f}{nc_rps / ng_rps:>16.2f}")
print(f"{'ostree pull, full tree (s)':32}{os_pull:>10.3f}{nc_pull:>10.3f}{ng_pull:>10.3f}"
      f"{os_pull / ng_pull:>15.2f}{nc_pull / ng_pull:>16.2f}")
PY
