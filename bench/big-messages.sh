#!/usr/bin/env bash
# Peak memory with many large messages at once: backstop in queue mode vs a Postfix gateway.
#
#   bench/big-messages.sh                       # 200 sessions, one 10 MiB message each
#   OLD_BIN=/path/to/older/backstop bench/big-messages.sh   # and an older build, same run
#
# Each side in turn (never two at once, so neither's disk writes slow the other) gets SESSIONS
# concurrent sessions from smtp-source, one message of SIZE bytes per session, for a recipient
# of a list source (no call-out, no DNS); backstop queues it (relay = "queue") and delivers it to
# its own smtp-sink, Postfix queues it and relays it to its own smtp-sink. Both run with the
# limits raised so that every session is served at once and SIZE is under the size limit
# (backstop: max_connections_per_ip, max_message_size; Postfix: the same three in main.cf);
# everything else is each side's default.
#
# Printed per side: messages the sink received (must be SESSIONS), seconds until smtp-source
# ended (every message answered) and until the sink had them all, and memory:
#   - backstop: the kernel's peak resident set of the process (VmHWM in /proc/PID/status);
#   - Postfix: many processes, so the peak over time of the sum of their proportional set sizes
#     (Pss, shared pages divided among the processes sharing them), sampled every 100 ms;
#   - for both, the same sampled Pss sum, so the two are compared by one measure.
# Environment: SESSIONS (200), SIZE (10485760), OLD_BIN, MESSAGE_IN_MEMORY (backstop's
# [limits] message_in_memory for the current build; its default when unset), KEEP=1.
# Needs root and postfix.
set -eu
SESSIONS=${SESSIONS:-200} SIZE=${SIZE:-10485760}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEER=$ROOT/tests/support/postfix-peer.sh
[ "$(id -u)" = 0 ] || { echo "big-messages: must run as root (Postfix peer)" >&2; exit 2; }
if [ -n "${BACKSTOP_BIN:-}" ]; then
  BIN=$BACKSTOP_BIN
else
  (cd "$ROOT" && cargo build --release -q -p backstop)
  BIN=$ROOT/target/release/backstop
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/big-messages.XXXXXX")
chmod 755 "$W"
PIDS=() PEERS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for d in "${PEERS[@]}"; do "$PEER" stop "$d"; done
  wait 2>/dev/null
  [ "${KEEP:-0}" = 1 ] && echo "work directory kept: $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "big-messages: nothing listening on port $1" >&2; exit 1
}
# smtp-sink -c prints a running count; the last number is the total so far
delivered() { tr '\r' '\n' <"$1" | grep -o '[0-9]\+' | tail -1 || echo 0; }

# The sampler: every 100 ms, the sum of Pss over ROOT_PID and all its descendants; at SIGTERM
# it prints the highest sum seen, in MiB.
cat >"$W/sample.py" <<'PY'
import os, signal, sys, time
root, peak = int(sys.argv[1]), [0]
def tree():
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(p))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop(); out.append(p); todo += kids.get(p, [])
    return out
def pss(p):
    try:
        with open(f"/proc/{p}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
def done(*_):
    print(f"{peak[0] / 1024:.0f}"); sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    peak[0] = max(peak[0], sum(pss(p) for p in tree()))
    time.sleep(0.1)
PY

load() { # name port sink_out root_pid -> prints the side's line of results
  local name=$1 port=$2 out=$3 root=$4 t0 t1 t2 s got
  python3 "$W/sample.py" "$root" >"$W/$name.pss" &
  s=$!
  t0=$(date +%s.%N)
  /usr/sbin/smtp-source -c -s "$SESSIONS" -m "$SESSIONS" -l "$SIZE" -f load@client.test \
    -t load@example.test "127.0.0.1:$port" >"$W/$name.source.out" 2>"$W/$name.source.err" \
    || echo "ANOMALY: $name: smtp-source exited $?"
  t1=$(date +%s.%N)
  for _ in $(seq 1 1200); do
    [ "$(delivered "$out")" -ge "$SESSIONS" ] && break
    sleep 0.1
  done
  t2=$(date +%s.%N)
  kill -TERM "$s"; wait "$s" || true
  got=$(delivered "$out")
  [ "$got" = "$SESSIONS" ] || echo "ANOMALY: $name: the sink got $got of $SESSIONS"
  [ -s "$W/$name.source.err" ] && echo "ANOMALY: $name: smtp-source: $(head -3 "$W/$name.source.err")"
  printf '%s: %s of %s delivered; answered in %.1f s, delivered in %.1f s; peak Pss sum %s MiB' \
    "$name" "$got" "$SESSIONS" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t0" | bc)" \
    "$(cat "$W/$name.pss")"
}

echo load@example.test >"$W/users.txt"
backstop_side() { # name binary
  local name=$1 bin=$2 sink smtp pid hwm
  sink=$(free_port) smtp=$(free_port)
  /usr/sbin/smtp-sink -c -u nobody "127.0.0.1:$sink" 1024 >"$W/$name.sink.out" 2>&1 &
  PIDS+=($!)
  cat >"$W/$name.toml" <<EOF
hostname = "mx.example.test"
state_dir = "$W/$name.state"
[[listen]]
addr = "127.0.0.1:$smtp"
[[domain]]
name = "example.test"
recipients = ["list:$W/users.txt"]
next_hop = "smtp:127.0.0.1:$sink"
relay = "queue"
[limits]
max_message_size = $((SIZE * 2))
max_connections_per_ip = $((SESSIONS + 50))
$([ "$name" = backstop ] && [ -n "${MESSAGE_IN_MEMORY:-}" ] && echo "message_in_memory = $MESSAGE_IN_MEMORY")
[delivery]
resolver = "127.0.0.1:9"
EOF
  RUST_LOG=info "$bin" serve --config "$W/$name.toml" 2>"$W/$name.log" &
  pid=$!
  PIDS+=($pid)
  wait_port "$smtp"; wait_port "$sink"
  load "$name" "$smtp" "$W/$name.sink.out" "$pid"
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
  echo "; peak RSS (VmHWM) $((hwm / 1024)) MiB"
  kill -TERM "$pid"; wait "$pid" || echo "ANOMALY: $name exited $?"
  grep -E ' (WARN|ERROR) ' "$W/$name.log" | head -3 | sed "s/^/$name log: /"
  rm -rf "$W/$name.state"
}

postfix_side() {
  local sink port master
  sink=$(free_port) port=$(free_port)
  /usr/sbin/smtp-sink -c -u nobody "127.0.0.1:$sink" 1024 >"$W/postfix.sink.out" 2>&1 &
  PIDS+=($!)
  wait_port "$sink"
  PEERS+=("$W/pf-gw")
  PEER_MAIN_CF="message_size_limit = $((SIZE * 2))
smtpd_client_connection_count_limit = $((SESSIONS + 50))
default_process_limit = $((SESSIONS + 50))" \
    "$PEER" start "$W/pf-gw" "$port" gateway example.test "$sink"
  wait_port "$port"
  master=$(tr -d ' \n' <"$W/pf-gw.queue/pid/master.pid")
  load postfix "$port" "$W/postfix.sink.out" "$master"
  echo
}

echo "$SESSIONS concurrent sessions, one message of $SIZE bytes each, queue mode"
backstop_side backstop "$BIN"
[ -n "${OLD_BIN:-}" ] && backstop_side backstop-old "$OLD_BIN"
postfix_side
