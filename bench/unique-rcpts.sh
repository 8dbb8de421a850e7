#!/usr/bin/env bash
# Every recipient new: backstop's call-out against Postfix's reject_unverified_recipient, with a
# cold cache, in one run; and the same Postfix asking backstop instead (check_policy_service).
#
#   bench/unique-rcpts.sh            # N=2000 messages for backstop, N_PF=200 for Postfix,
#                                    # N_POL=2000 for Postfix + backstop's policy service; 3 rounds
#
# Both gateways verify against the same internal Postfix (it knows u0..uK@example.test and
# relays what it takes to an smtp-sink) and relay to it: backstop in the session
# (callout:INTERNAL, next_hop smtp:INTERNAL, so a new recipient is verified by the relayed RCPT
# itself), the Postfix gateway through its queue (tests/support/postfix-peer.sh ... gateway
# ... verify). A third side is a Postfix gateway configured the same way but with
# check_policy_service to backstop's policy listener instead of reject_unverified_recipient (it
# cannot relay in backstop's session, so each new recipient is one probe by backstop).
# Each message goes to a recipient neither has seen: SESSIONS client sessions at a
# time, one message each (MAIL, one RCPT, DATA, 1 KiB), by bench/new-rcpts.py. A round's rate
# is the messages accepted (250 after DATA) per second until the last session ends; deferred
# (4xx) and refused (5xx) answers are counted too. Rounds alternate backstop, Postfix.
# backstop's probe budgets are lifted (all load comes from one client IP, which the default
# budget of 120 probes a minute would defer as a harvest).
# Environment: N, N_PF, N_POL, RUNS (3), SESSIONS (20), BACKSTOP_BIN, KEEP=1. Needs root,
# postfix.
set -eu
N=${N:-2000} N_PF=${N_PF:-200} N_POL=${N_POL:-2000} RUNS=${RUNS:-3} SESSIONS=${SESSIONS:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEER=$ROOT/tests/support/postfix-peer.sh
[ "$(id -u)" = 0 ] || { echo "unique-rcpts: must run as root (Postfix peers)" >&2; exit 2; }
if [ -n "${BACKSTOP_BIN:-}" ]; then
  BIN=$BACKSTOP_BIN
else
  (cd "$ROOT" && cargo build --release -q -p backstop)
  BIN=$ROOT/target/release/backstop
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/unique-rcpts.XXXXXX")
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
read -r P_INT S_INT P_BS P_PF P_POL P_PP < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "unique-rcpts: nothing listening on port $1" >&2; exit 1
}

# users for every round of both sides, never one twice
USERS=$(( RUNS * (N + N_PF + N_POL) + 10 ))
python3 -c "import sys; sys.stdout.write(''.join(f'u{i}@example.test\n' for i in range($USERS)))" >"$W/users"
/usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$S_INT" 1024 >"$W/sink.out" 2>&1 &
PIDS+=($!)
wait_port "$S_INT"
PEERS+=("$W/pf-int")
PEER_MAIN_CF="default_process_limit = 200" "$PEER" start "$W/pf-int" "$P_INT" internal example.test "$W/users" "$S_INT"
PEERS+=("$W/pf-gw")
"$PEER" start "$W/pf-gw" "$P_PF" gateway example.test "$P_INT" verify
PEERS+=("$W/pf-pol")
PEER_MAIN_CF="smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service inet:127.0.0.1:$P_POL" \
  "$PEER" start "$W/pf-pol" "$P_PP" gateway example.test "$P_INT"
cat >"$W/backstop.toml" <<EOF
hostname = "gw.example.test"
state_dir = "$W/bs-state"
[[listen]]
addr = "127.0.0.1:$P_BS"
[[listen]]
addr = "127.0.0.1:$P_POL"
protocol = "policy"
[[domain]]
name = "example.test"
recipients = ["callout:127.0.0.1:$P_INT"]
next_hop = "smtp:127.0.0.1:$P_INT"
[callout]
# every client is one IP here: lift the probe budgets, made against harvests, to measure speed
budget_per_client = 1000000
budget_total = 1000000
[delivery]
resolver = "127.0.0.1:9"
EOF
RUST_LOG=info "$BIN" serve --config "$W/backstop.toml" 2>"$W/backstop.log" &
BS_PID=$!
wait_port "$P_BS"
wait_port "$P_PF"
wait_port "$P_POL"
wait_port "$P_PP"

load() { # PORT FIRST COUNT -> "accepted deferred refused seconds"
  python3 "$ROOT/bench/new-rcpts.py" "$1" "$2" "$3" "$SESSIONS"
}

echo "N=$N (backstop), N_PF=$N_PF (Postfix) and N_POL=$N_POL (Postfix + policy) new recipients per round, $SESSIONS sessions, $RUNS rounds"
next=0
: >"$W/results"
for i in $(seq 1 "$RUNS"); do
  for side in backstop postfix policy; do
    case $side in
      backstop) port=$P_BS n=$N ;;
      postfix) port=$P_PF n=$N_PF ;;
      policy) port=$P_PP n=$N_POL ;;
    esac
    read -r ok deferred refused secs < <(load "$port" "$next" "$n")
    next=$((next + n))
    rate=$(python3 -c "print(round($ok / $secs, 1))")
    echo "$side round $i: $ok accepted, $deferred deferred, $refused refused in ${secs}s: $rate msg/s"
    echo "$side $i $rate" >>"$W/results"
  done
done
python3 - "$W/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {s: statistics.median(float(r[2]) for r in rows if r[0] == s)
       for s in ("backstop", "postfix", "policy")}
pf = max(med['postfix'], 1e-9)
print(f"median: backstop {med['backstop']:.1f} msg/s, Postfix {med['postfix']:.1f} msg/s, "
      f"Postfix + backstop policy {med['policy']:.1f} msg/s; ratios to Postfix: backstop "
      f"{med['backstop'] / pf:.1f}x, Postfix + policy {med['policy'] / pf:.1f}x")
PY
echo "backstop: $(grep -c 'event="callout_probe"' "$W/backstop.log" || true) probes," \
  "$(grep -c 'reason="relay-valid"' "$W/backstop.log" || true) recipients verified by the relayed RCPT"
