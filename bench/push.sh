#!/usr/bin/env bash
# Compares `osbuild push` with ostree-push 1.2.0 (the Python client) over a local link.
#
# Both clients push the same client repository to a real OpenSSH sshd that runs the same
# receiver, ostree-push's own `ostree-receive-1`, into an archive repo of its own; only
# the client differs. Two cases:
#   fresh:    a tree of about 300 MB (real files from /usr) into an empty server repo;
#   one-file: a commit that adds one file, pushed on top of the first.
# Each push runs RUNS times (default 3), the clients alternating; the median is reported.
#
# The server (sshd and the receiver it runs) lives in a private network namespace,
# reached over a veth pair with loopback's MTU. So "bytes on the wire" are exactly the
# client<->server traffic: the veth's counters (IP packets both ways, headers included),
# with none of the loopback hops each side makes internally (the receiver's pull through
# the forwarded port, ostree-push's ssh client to its local HTTP server) and none of
# whatever else runs on this machine.
#
# Needs root, iproute2, openssh-server, python3-venv, python3-gi, gir1.2-ostree-1.0,
# python3-cairo (scripts/install-deps.sh) and PyPI for ostree-push.
# Usage: bench/push.sh [SIZE_MB]   (default 300; work files under target/bench-push)
set -euo pipefail

SIZE_MB=${1:-300}
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$ROOT/target/bench-push
VENV=$ROOT/target/tmp/ostree-push-1.2.0
BRANCH=bench/x86_64
NS=osbuild-bench-push
VETH=osbpush0
CLIENT_IP=10.231.77.1
SERVER_IP=10.231.77.2

[ "$(id -u)" = 0 ] || { echo "bench/push.sh must run as root (sshd, netns)" >&2; exit 1; }

echo "== building osbuild (release)" >&2
(cd "$ROOT" && cargo build --release --quiet --bin osbuild)
OSBUILD=$ROOT/target/release/osbuild

# The same venv the tests use: Debian's python (for its gi bindings) + ostree-push 1.2.0.
if [ ! -e "$VENV/.osbuild-complete" ]; then
  echo "== creating the ostree-push venv in $VENV" >&2
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install --quiet ostree-push==1.2.0
  echo 1.2.0 >"$VENV/.osbuild-complete"
fi

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"

SSHD_PID=
cleanup() {
  [ -n "$SSHD_PID" ] && kill "$SSHD_PID" 2>/dev/null || true
  ip link del $VETH 2>/dev/null || true
  ip netns del $NS 2>/dev/null || true
}
cleanup
trap cleanup EXIT

echo "== building a ${SIZE_MB} MB tree from /usr" >&2
# The first files of a sorted listing of /usr/lib/x86_64-linux-gnu and /usr/share, up to
# the size, one name per inode, skipping single files over 16 MB: real binaries and text,
# so that compression behaves as for an OS tree. (awk reads to the end so that sort never
# gets SIGPIPE.)
find /usr/lib/x86_64-linux-gnu /usr/share -type f -printf '%s %i %p\n' | sort -k3 |
  awk -v max=$((SIZE_MB * 1000 * 1000)) '
    $1 <= 16777216 && !seen[$2]++ && total + $1 <= max {
      total += $1; sub(/^[0-9]+ [0-9]+ /, ""); print
    }' >files.txt
mkdir tree
tar -cf - -T files.txt 2>/dev/null | tar -xf - -C tree
echo "   $(wc -l <files.txt) files, $(du -sm tree | cut -f1) MiB" >&2

echo "== committing into the client repository" >&2
ostree init --repo=client --mode=archive
ostree commit --repo=client --branch=$BRANCH --tree=dir=tree --subject=fresh >/dev/null
ostree summary --repo=client --update
echo "   archive repo $(du -sm client | cut -f1) MiB" >&2

echo "== starting sshd in network namespace $NS ($SERVER_IP)" >&2
ip netns add $NS
ip link add $VETH type veth peer name osbpush1 netns $NS
ip addr add $CLIENT_IP/30 dev $VETH
ip link set $VETH mtu 65535 up
ip netns exec $NS ip addr add $SERVER_IP/30 dev osbpush1
ip netns exec $NS ip link set osbpush1 mtu 65535 up
ip netns exec $NS ip link set lo up

ssh-keygen -q -t ed25519 -N '' -C bench-host -f host_key
ssh-keygen -q -t ed25519 -N '' -C bench-user -f user_key
cp user_key.pub authorized_keys
mkdir -p /run/sshd
PORT=2222
cat >sshd_config <<EOF
Port $PORT
ListenAddress $SERVER_IP
HostKey $WORK/host_key
AuthorizedKeysFile $WORK/authorized_keys
PidFile none
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding yes
SetEnv PATH=$VENV/bin:/usr/bin:/bin
EOF
ip netns exec $NS /usr/sbin/sshd -D -e -f "$WORK/sshd_config" 2>sshd.log &
SSHD_PID=$!
for _ in $(seq 100); do
  grep -q "Server listening" sshd.log && break
  sleep 0.1
done
echo "[$SERVER_IP]:$PORT $(cut -d' ' -f1,2 host_key.pub)" >known_hosts

wire_bytes() {
  echo $(($(cat /sys/class/net/$VETH/statistics/rx_bytes) + $(cat /sys/class/net/$VETH/statistics/tx_bytes)))
}

push_osbuild() {
  "$OSBUILD" push --repo=client --identity=user_key --known-hosts=known_hosts \
    "ssh://root@$SERVER_IP:$PORT$WORK/$1" $BRANCH
}
push_ostree_push() {
  "$VENV/bin/ostree-push" --repo=client -i user_key -o "UserKnownHostsFile=$WORK/known_hosts" \
    -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes \
    "ssh://root@$SERVER_IP:$PORT$WORK/$1" $BRANCH
}

# measure KEY SERVER_REPO CLIENT_FN: one timed push; appends "seconds bytes" to KEY.runs.
measure() {
  local key=$1 repo=$2 fn=$3 b0 t0 t1 b1
  b0=$(wire_bytes)
  t0=$(date +%s.%N)
  "$fn" "$repo" >"$key.log" 2>&1 || { echo "$key failed:" >&2; cat "$key.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  # The last packets (FIN/ACK) may trail the client's exit by a moment.
  sleep 0.2
  b1=$(wire_bytes)
  awk -v a="$t0" -v b="$t1" -v n=$((b1 - b0)) 'BEGIN { printf "%.2f %d\n", b - a, n }' >>"$key.runs"
  echo "   $key: $(tail -1 "$key.runs")" >&2
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "== fresh push, $RUNS runs each" >&2
for i in $(seq "$RUNS"); do
  for client in osbuild ostree-push; do
    rm -rf "server-$client"
    ostree init --repo="server-$client" --mode=archive
    measure "fresh-$client" "server-$client" "push_${client//-/_}"
  done
done
# The last fresh push of each client is the base of its one-file pushes.
for client in osbuild ostree-push; do mv "server-$client" "base-$client"; done

echo "== one-file change, $RUNS runs each" >&2
head -c 65536 /dev/urandom >tree/added-file
ostree commit --repo=client --branch=$BRANCH --tree=dir=tree --subject=one-file >/dev/null
ostree summary --repo=client --update
for i in $(seq "$RUNS"); do
  for client in osbuild ostree-push; do
    rm -rf "server-$client"
    cp -a "base-$client" "server-$client"
    measure "one-file-$client" "server-$client" "push_${client//-/_}"
    [ "$(ostree cat --repo="server-$client" $BRANCH /added-file | wc -c)" = 65536 ] ||
      { echo "server-$client lacks the pushed change" >&2; exit 1; }
  done
done

declare -A T B
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "Median of $RUNS runs; wire = IP bytes both ways between client and server"
printf '%-9s %-12s %9s %14s\n' case client seconds wire-bytes
for c in fresh one-file; do
  for k in osbuild ostree-push; do
    T[$k]=$(cut -d' ' -f1 "$c-$k.runs" | median)
    B[$k]=$(cut -d' ' -f2 "$c-$k.runs" | median)
    printf '%-9s %-12s %9s %14s\n' "$c" "$k" "${T[$k]}" "${B[$k]}"
  done
  printf '%-9s %-12s %9s %14s\n' "$c" "ratio" "$(ratio "${T[osbuild]}" "${T[ostree-push]}")" \
    "$(ratio "${B[osbuild]}" "${B[ostree-push]}")"
done
echo "(ratio = osbuild / ostree-push)"
