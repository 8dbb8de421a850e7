#!/usr/bin/env bash
# What asking backstop costs a Postfix: the same Postfix gateway alone, with a milter that does
# nothing, and with check_policy_service and smtpd_milters to backstop (warm cache), in one run.
#
#   bench/postfix-overhead.sh        # N=5000 messages per round, 20 sessions, 5 rounds each
#
# Three Postfix gateways for example.test, configured alike (tests/support/postfix-peer.sh ...
# gateway), each relaying through its queue to its own smtp-sink:
#   alone     nothing more;
#   null      smtpd_milters = a milter built on Sendmail's libmilter whose every callback
#             answers continue at once (bench/null-milter.c, asking for no reply but at the
#             end of the message, as backstop does): what any milter costs this Postfix;
#   backstop  smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service
#             to backstop's policy listener, and smtpd_milters to its milter listener (MILTER=0
#             leaves the milter out, POLICY=0 the policy service).
# backstop's domain verifies by call-out against an internal Postfix that knows the recipient
# (asked once before measuring, so the cache is warm: the measured runs make no probe).
# Load: smtp-source -s SESSIONS -m N -l 1024, one recipient per message, one message per SMTP
# session (KEEPALIVE=1: -d, many per session). A round is timed until its sink has counted all
# N (the queue drained). Rounds alternate between the sides. Prints every round, the medians,
# and each side's median as a share of Postfix alone; backstop's CPU time. Environment: N, RUNS,
# SESSIONS, MILTER, POLICY, KEEPALIVE, BACKSTOP_BIN, KEEP=1. Needs root, postfix, a C compiler
# and libmilter-dev.
set -eu
N=${N:-5000} RUNS=${RUNS:-5} SESSIONS=${SESSIONS:-20} MILTER=${MILTER:-1} POLICY=${POLICY:-1}
KEEPALIVE=${KEEPALIVE:-0}
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
cc -O2 -o "$W/null-milter" "$ROOT/bench/null-milter.c" -lmilter -lpthread
read -r P_INT S_INT P_BS P_POL P_MIL P_NULL < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "postfix-overhead: nothing listening on port $1" >&2; exit 1
}
# smtp-sink -c prints a running count; the last number is the total so far
delivered() { tr '\r' '\n' <"$1" | grep -o '[0-9]\+' | tail -1 || echo 0; }
# starts an smtp-sink on a free port and sets SINK_PORT (not in a subshell: its PID must reach
# PIDS for the cleanup)
sink() {
  SINK_PORT=$(free_port)
  /usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$SINK_PORT" 1024 >"$W/sink-$SINK_PORT.out" 2>&1 &
  PIDS+=($!)
  wait_port "$SINK_PORT"
}

echo load@example.test >"$W/users"
sink
S_INT=$SINK_PORT
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
"$W/null-milter" "inet:$P_NULL@127.0.0.1" &
PIDS+=($!)
wait_port "$P_NULL"

MILTER_CF="milter_default_action = tempfail"
WITH="smtpd_recipient_restrictions = reject_unauth_destination"
[ "$POLICY" = 1 ] && WITH="$WITH, check_policy_service inet:127.0.0.1:$P_POL"
[ "$MILTER" = 1 ] && WITH="$WITH
smtpd_milters = inet:127.0.0.1:$P_MIL
$MILTER_CF"
SIDES=(alone null backstop)
declare -A PORT SINK CF
CF[alone]=""
CF[null]="smtpd_milters = inet:127.0.0.1:$P_NULL
$MILTER_CF"
CF[backstop]=$WITH
for side in "${SIDES[@]}"; do
  PORT[$side]=$(free_port)
  sink
  SINK[$side]=$SINK_PORT
  PEERS+=("$W/pf-$side")
  PEER_MAIN_CF="${CF[$side]}" "$PEER" start "$W/pf-$side" "${PORT[$side]}" gateway example.test "${SINK[$side]}"
  wait_port "${PORT[$side]}"
done
# warm the cache: the one recipient, asked once
swaks --server "127.0.0.1:${PORT[backstop]}" --to load@example.test --from load@client.test \
  --helo client.test >/dev/null
"$BIN" verify load@example.test --config "$W/backstop.toml" | head -2

run() { # SIDE -> msg/s
  local port=${PORT[$1]} out=$W/sink-${SINK[$1]}.out before want t0 t1
  before=$(delivered "$out"); before=${before:-0}
  want=$((before + N))
  t0=$(date +%s.%N)
  # shellcheck disable=SC2046 # -d or nothing
  /usr/sbin/smtp-source $([ "$KEEPALIVE" = 1 ] && echo -d) -s "$SESSIONS" -m "$N" -l 1024 \
    -f load@client.test -t load@example.test "127.0.0.1:$port" 2>>"$W/source.err"
  for _ in $(seq 1 1200); do
    [ "$(delivered "$out")" -ge "$want" ] && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  [ "$(delivered "$out")" -ge "$want" ] || echo "ANOMALY: $1: $(delivered "$out") of $want" >&2
  python3 -c "print(round($N / ($t1 - $t0)))"
}
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$BS_PID/stat"; }

echo "N=$N messages per round, $SESSIONS sessions, 1 KiB, $RUNS rounds each, alternating;" \
  "backstop side: policy $POLICY, milter $MILTER; many messages per session: $KEEPALIVE"
declare -A R
probes0=$(grep -c 'event="callout_probe"' "$W/backstop.log" || true)
cpu0=$(cpu)
for i in $(seq 1 "$RUNS"); do
  line="round $i:"
  for side in "${SIDES[@]}"; do
    r=$(run "$side")
    R[$side]="${R[$side]:-} $r"
    line="$line $side $r msg/s,"
  done
  echo "${line%,}"
done
python3 - "${R[alone]}" "${R[null]}" "${R[backstop]}" <<'EOF'
import statistics, sys
a, n, b = (statistics.median(float(x) for x in arg.split()) for arg in sys.argv[1:])
print(f"median msg/s: Postfix alone {a:.0f}; with a null milter {n:.0f} ({100 * n / a:.0f}%);"
      f" asking backstop {b:.0f} ({100 * b / a:.0f}% of alone, {100 * b / n:.0f}% of the null milter)")
EOF
echo "backstop: $(python3 -c "print(round($(cpu) - $cpu0, 2))") s CPU while measuring;" \
  "$(( $(grep -c 'event="callout_probe"' "$W/backstop.log" || true) - probes0 )) probes;" \
  "$(grep -c 'event="rcpt"' "$W/backstop.log" || true) recipients answered;" \
  "smtp-source errors: $(wc -l <"$W/source.err")"
