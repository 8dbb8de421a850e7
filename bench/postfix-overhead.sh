#!/usr/bin/env bash
# What asking backstop costs a Postfix: the same Postfix gateway alone, and with
# check_policy_service and smtpd_milters to backstop (warm cache), in one run.
#
#   bench/postfix-overhead.sh        # N=5000 messages per round, 20 sessions, 5 rounds each
#
# Two Postfix gateways for example.test, configured alike (tests/support/postfix-peer.sh ...
# gateway), each relaying through its queue to its own smtp-sink; the second has
#   smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service inet:...
# pointing at backstop's policy listener, and smtpd_milters at its milter listener (every
# message shown to it at its end; MILTER=0 leaves the milter out), whose domain verifies by call-out against an internal
# Postfix that knows the recipient (asked once before measuring, so the cache is warm: the
# measured runs make no probe). Load: smtp-source -s SESSIONS -m N -l 1024, one recipient per
# message. A round is timed until its sink has counted all N (the queue drained). Rounds
# alternate alone, with policy. Prints every round, the medians, and the policy side's median
# as a share of Postfix alone. Environment: N, RUNS, SESSIONS, BACKSTOP_BIN, KEEP=1. Needs root
# and postfix.
set -eu
N=${N:-5000} RUNS=${RUNS:-5} SESSIONS=${SESSIONS:-20} MILTER=${MILTER:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEER=$ROOT/tests/support/postfix-peer.sh
[ "$(id -u)" = 0 ] || { echo "postfix-overhead: must run as root (Postfix peers)" >&2; exit 2; }
if [ -n "${BACKSTOP_BIN:-}" ]; then
  BIN=$BACKSTOP_BIN
else
  (cd "$ROOT" && cargo build --release -q -p backstop)
  BIN=$ROOT/target/release/backstop
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/postfix-overhead.XXXXXX")
chmod 755 "$W"
PIDS=() PEERS=()
cleanup() {
  set +e
  [ -n "${BS_PID:-}" ] && kill -TERM "$BS_PID" 2>/dev/null && wait "$BS_PID" 2>/dev/null
  for d in "${PEERS[@]}"; do "$PEER" stop "$d"; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [ "${KEEP:-0}" = 1 ] && echo "work directory kept: $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT
read -r P_INT S_INT P_BS P_POL P_ALONE S_ALONE P_WITH S_WITH P_MIL < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(9)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "postfix-overhead: nothing listening on port $1" >&2; exit 1
}
# smtp-sink -c prints a running count; the last number is the total so far
delivered() { tr '\r' '\n' <"$1" | grep -o '[0-9]\+' | tail -1 || echo 0; }

echo load@example.test >"$W/users"
for s in "$S_INT" "$S_ALONE" "$S_WITH"; do
  /usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$s" 1024 >"$W/sink-$s.out" 2>&1 &
  PIDS+=($!)
  wait_port "$s"
done
PEERS+=("$W/pf-int")
"$PEER" start "$W/pf-int" "$P_INT" internal example.test "$W/users" "$S_INT"
cat >"$W/backstop.toml" <<EOF
hostname = "gw.example.test"
state_dir = "$W/bs-state"
[[listen]]
addr = "127.0.0.1:$P_BS"
[[listen]]
addr = "127.0.0.1:$P_POL"
protocol = "policy"
[[listen]]
addr = "127.0.0.1:$P_MIL"
protocol = "milter"
[[domain]]
name = "example.test"
recipients = ["callout:127.0.0.1:$P_INT"]
next_hop = "smtp:127.0.0.1:$P_INT"
[delivery]
resolver = "127.0.0.1:9"
EOF
RUST_LOG=info "$BIN" serve --config "$W/backstop.toml" 2>"$W/backstop.log" &
BS_PID=$!
wait_port "$P_POL"
wait_port "$P_MIL"
PEERS+=("$W/pf-alone" "$W/pf-with")
"$PEER" start "$W/pf-alone" "$P_ALONE" gateway example.test "$S_ALONE"
WITH="smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service inet:127.0.0.1:$P_POL"
[ "$MILTER" = 1 ] && WITH="$WITH
smtpd_milters = inet:127.0.0.1:$P_MIL
milter_default_action = tempfail"
PEER_MAIN_CF="$WITH" "$PEER" start "$W/pf-with" "$P_WITH" gateway example.test "$S_WITH"
wait_port "$P_ALONE"
wait_port "$P_WITH"
# warm the cache: the one recipient, asked once
swaks --server "127.0.0.1:$P_WITH" --to load@example.test --from load@client.test \
  --helo client.test >/dev/null
"$BIN" verify load@example.test --config "$W/backstop.toml" | head -2

run() { # PORT SINK_OUT -> msg/s
  local port=$1 out=$2 before want t0 t1
  before=$(delivered "$out"); before=${before:-0}
  want=$((before + N))
  t0=$(date +%s.%N)
  /usr/sbin/smtp-source -s "$SESSIONS" -m "$N" -l 1024 -f load@client.test \
    -t load@example.test "127.0.0.1:$port" 2>>"$W/source.err"
  for _ in $(seq 1 1200); do
    [ "$(delivered "$out")" -ge "$want" ] && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  [ "$(delivered "$out")" -ge "$want" ] || echo "ANOMALY: $port: $(delivered "$out") of $want" >&2
  python3 -c "print(round($N / ($t1 - $t0)))"
}

echo "N=$N messages per round, $SESSIONS sessions, 1 KiB, $RUNS rounds each, alternating; milter: $MILTER"
ra=() rb=()
probes0=$(grep -c 'event="callout_probe"' "$W/backstop.log" || true)
for i in $(seq 1 "$RUNS"); do
  a=$(run "$P_ALONE" "$W/sink-$S_ALONE.out"); b=$(run "$P_WITH" "$W/sink-$S_WITH.out")
  ra+=("$a"); rb+=("$b")
  echo "round $i: Postfix alone $a msg/s, Postfix + backstop $b msg/s"
done
python3 - "${ra[*]}" "${rb[*]}" <<'EOF'
import statistics, sys
a = statistics.median(float(x) for x in sys.argv[1].split())
b = statistics.median(float(x) for x in sys.argv[2].split())
print(f"median: Postfix alone {a:.0f} msg/s, asking backstop {b:.0f} msg/s: {100 * b / a:.0f}%")
EOF
echo "backstop: $(( $(grep -c 'event="callout_probe"' "$W/backstop.log" || true) - probes0 )) probes while measuring;" \
  "$(grep -c 'event="rcpt"' "$W/backstop.log" || true) recipients answered;" \
  "smtp-source errors: $(wc -l <"$W/source.err")"
