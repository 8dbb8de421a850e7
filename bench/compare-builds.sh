#!/usr/bin/env bash
# Two builds of backstop, A and B, in one run: which is faster, and by how much. For a change
# whose cost must be known (more log fields, a lock on the session path), where the machine's
# own variance between two runs of compare-postfix.sh is larger than the change.
#
#   bench/compare-builds.sh OLD_BINARY NEW_BINARY
#
# Both run the same configuration side by side (in-session relay to one smtp-sink each, a list
# source: no call-out, no DNS), logging at info to a file as in production. Rounds alternate
# A, B, A, B, ...; each round sends N messages of SIZE bytes over SESSIONS sessions with
# smtp-source and is timed until its sink has counted all N. Prints every round and the
# medians, and B's median as a share of A's. Environment: N (20000), RUNS (5), SESSIONS (20),
# SIZE (1024), KEEP=1 (keep the work directory with both logs). Needs Postfix's smtp-source and
# smtp-sink (Debian package postfix). Everything it starts is stopped by its exit trap.
set -euo pipefail
A=${1:?usage: $0 OLD_BINARY NEW_BINARY}; B=${2:?usage: $0 OLD_BINARY NEW_BINARY}
N=${N:-20000} RUNS=${RUNS:-5} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-1024}
W=$(mktemp -d "${TMPDIR:-/tmp}/compare-builds.XXXXXX")
chmod 755 "$W"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-}" = 1 ] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }

echo "load@example.test" >"$W/users.txt"
start() { # side binary -> sets port_$side, sink_$side
  local side=$1 bin=$2 sink smtp
  sink=$(free_port); smtp=$(free_port)
  mkdir -p "$W/$side"
  /usr/sbin/smtp-sink -c -u nobody "127.0.0.1:$sink" 1024 >"$W/$side/sink.out" 2>&1 &
  pids+=($!)
  cat >"$W/$side/backstop.toml" <<EOF
hostname = "mx.example.test"
state_dir = "$W/$side/state"
[[listen]]
addr = "127.0.0.1:$smtp"
[[domain]]
name = "example.test"
recipients = ["list:$W/users.txt"]
next_hop = "smtp:127.0.0.1:$sink"
[delivery]
resolver = "127.0.0.1:9"
EOF
  RUST_LOG=info "$bin" serve --config "$W/$side/backstop.toml" 2>"$W/$side/backstop.log" &
  pids+=($!)
  wait_port "$smtp"; wait_port "$sink"
  eval "port_$side=$smtp sinkport_$side=$sink"
}
start a "$A"
start b "$B"

# smtp-sink -c prints a running count; the last number is the total so far
delivered() { tr '\r' '\n' <"$W/$1/sink.out" | grep -o '[0-9]\+' | tail -1 || echo 0; }

run() { # side -> prints msg/s
  local side=$1 port before t0 t1 want
  eval "port=\$port_$side"
  before=$(delivered "$side"); before=${before:-0}
  want=$((before + N))
  t0=$(date +%s.%N)
  /usr/sbin/smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -f load@client.test \
    -t load@example.test "127.0.0.1:$port" 2>>"$W/$side/source.err"
  for _ in $(seq 1 600); do
    [ "$(delivered "$side")" -ge "$want" ] && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  python3 -c "print(round($N / ($t1 - $t0)))"
}

echo "A: $A"
echo "B: $B"
echo "N=$N messages per round, $SESSIONS sessions, $SIZE bytes, $RUNS rounds each, alternating"
ra=() rb=()
run a >/dev/null; run b >/dev/null   # warm-up
for i in $(seq 1 "$RUNS"); do
  a=$(run a); b=$(run b)
  ra+=("$a"); rb+=("$b")
  echo "round $i: A $a msg/s, B $b msg/s"
done
python3 - "${ra[*]}" "${rb[*]}" <<'EOF'
import statistics, sys
a = [int(x) for x in sys.argv[1].split()]
b = [int(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"median: A {ma:.0f} msg/s, B {mb:.0f} msg/s; B/A = {mb / ma:.3f}")
EOF
for s in a b; do
  errs=$(grep -c . "$W/$s/source.err" || true)
  lines=$(wc -l <"$W/$s/backstop.log")
  bytes=$(wc -c <"$W/$s/backstop.log")
  echo "side $s: smtp-source error lines $errs; log $lines lines, $((bytes / (N * (RUNS + 1)))) bytes per message"
done
