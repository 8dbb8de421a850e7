#!/bin/bash
# End-to-end messages/s through backstop and through a Postfix gateway configured the same way,
# side by side in one run, and their ratio. See bench/README.md.
#
#   bench/compare-postfix.sh            # N=20000 messages per run, 3 runs per side
#   N=2000 RUNS=2 bench/compare-postfix.sh   # quick run
#   bench/compare-postfix.sh --mode queue    # backstop with relay = "queue" (or MODE=queue)
#
# Mode (--mode MODE or MODE=..., default in-session): backstop's relay setting for the domain.
#   in-session: the message is relayed to the sink during the client's DATA; 250 is the sink's.
#   queue:      the message is made durable in backstop's spool (state_dir/queue, fdatasync'd),
#               then 250; delivery workers forward it to the sink. state_dir must not be on
#               tmpfs (the script refuses), so the fsyncs are real.
# Environment: N (messages per run, 20000), RUNS (runs per side, alternating, 3), SESSIONS
# (concurrent smtp-source sessions, 20), SIZE (message bytes, 1024), STALL (seconds without a
# delivery before a run is declared stuck, 60), BACKSTOP_BIN (skip the build and use this
# binary), KEEP=1 (keep the work directory with every log), RUST_LOG (backstop's log filter,
# default "info" as in production), TMPDIR (where the work directory is made, default /tmp),
# STORE (embedded, or redis: backstop's [store] on a private redis-server, as in cluster mode).
#
# Topology (all on 127.0.0.1, free ports):
#   backstop side: smtp-source -> backstop (callout:internal Postfix, cached;
#                  next_hop smtp:sink-bs, relay MODE) -> smtp-sink "sink-bs"
#   Postfix side:  smtp-source -> Postfix gateway (reject_unverified_recipient, cached;
#                  relays to sink-pf through its queue) -> smtp-sink "sink-pf"
#   ceiling:       smtp-source -> smtp-sink "sink-direct" (no gateway; the client + loopback limit)
# Each round runs ceiling, backstop, Postfix in turn; medians are over the rounds.
# A run ends when the side's sink has counted all N messages (for Postfix: the queue has
# drained; for backstop in queue mode: its queue has drained), not when smtp-source finishes.
# backstop's resolver is a dnsmasq on loopback started here, with an SPF record for the sender's
# domain that passes. No reply waits for it: a sender's SPF and DKIM are checked only when a
# report is due (none is, here). DNS_DELAY=0.5 puts a proxy in front of dnsmasq that answers
# every query after 0.5 s, as a slow resolver would.
# Needs root, postfix (smtp-source, smtp-sink), swaks, dnsmasq (Debian dnsmasq-base).
set -eu

MODE=${MODE:-in-session}
STORE=${STORE:-embedded}
case $STORE in
  embedded | redis) ;;
  *) echo "compare-postfix: STORE must be embedded or redis, not $STORE" >&2; exit 2 ;;
esac
while [ $# -gt 0 ]; do
  case $1 in
    --mode) MODE=${2:?--mode needs queue or in-session}; shift 2 ;;
    --mode=*) MODE=${1#--mode=}; shift ;;
    *) echo "compare-postfix: unknown argument $1 (usage: $0 [--mode queue|in-session])" >&2; exit 2 ;;
  esac
done
case $MODE in
  in-session | queue) ;;
  *) echo "compare-postfix: mode must be queue or in-session, not $MODE" >&2; exit 2 ;;
esac

N=${N:-20000}
RUNS=${RUNS:-3}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
STALL=${STALL:-60}
RCPT=user@example.test
FROM=a@client.test

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEER=$ROOT/tests/support/postfix-peer.sh
SOURCE=/usr/sbin/smtp-source
SINK=/usr/sbin/smtp-sink

for t in "$SOURCE" "$SINK" swaks python3 postfix /usr/sbin/dnsmasq; do
  command -v "$t" >/dev/null || { echo "compare-postfix: $t is needed" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "compare-postfix: must run as root (Postfix peers)" >&2; exit 2; }

if [ -n "${BACKSTOP_BIN:-}" ]; then
  BIN=$BACKSTOP_BIN
else
  (cd "$ROOT" && cargo build --release -q -p backstop)
  BIN=$ROOT/target/release/backstop
fi

# in queue mode backstop's spool is in the work directory: it must be on a disk, where fsync is real
if [ "$MODE" = queue ]; then
  case $(stat -f -c '%T' "${TMPDIR:-/tmp}") in
    tmpfs | ramfs)
      echo "compare-postfix: ${TMPDIR:-/tmp} is a tmpfs, fsync would cost nothing; set TMPDIR to a disk" >&2
      exit 2 ;;
  esac
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/backstop-bench.XXXXXX")
chmod 755 "$W" # Postfix's own user must be able to read the peer directories
PIDS=()
PEERS=()
cleanup() {
  local rc=$?
  set +e
  if [ -n "${BS_PID:-}" ] && kill -0 "$BS_PID" 2>/dev/null; then
    kill -TERM "$BS_PID"
    for _ in $(seq 1 100); do kill -0 "$BS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$BS_PID" 2>/dev/null
  fi
  for d in "${PEERS[@]}"; do "$PEER" stop "$d"; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  if [ "${KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
    echo "work directory kept: $W" >&2
  else
    rm -rf "$W"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# seven distinct free loopback ports, found by binding them all at once
read -r P_INT P_BS P_PF S_INT S_BS S_PF S_DIR < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(7)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

wait_port() { # PORT: until something listens on 127.0.0.1:PORT
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "compare-postfix: nothing listening on port $1" >&2
  return 1
}

start_sink() { # NAME PORT: an smtp-sink counting messages into $W/NAME.out
  "$SINK" -u nobody -c "127.0.0.1:$2" 1024 >"$W/$1.out" 2>"$W/$1.err" &
  PIDS+=($!)
  wait_port "$2"
}

sink_count() { # NAME: messages the sink has received so far (its last "mesg=" counter)
  local n
  n=$(tail -c 200 "$W/$1.out" | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -n 1 | cut -d= -f2)
  echo "${n:-0}"
}

wait_count() { # NAME TARGET: until the sink has TARGET messages; fails after STALL s of no progress
  local last=-1 since=$SECONDS c
  while :; do
    c=$(sink_count "$1")
    [ "$c" -ge "$2" ] && return 0
    if [ "$c" != "$last" ]; then last=$c; since=$SECONDS; fi
    if [ $((SECONDS - since)) -ge "$STALL" ]; then
      echo "compare-postfix: $1 stuck at $c messages (wanted $2)" >&2
      return 1
    fi
    sleep 0.1
  done
}

now() { date +%s.%N; }

cpu_ticks() { # PID: utime+stime of a process, in clock ticks
  awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

backstop_queue() { # TAG: messages still in backstop's queue, asked of the running gateway
  # (control socket); "?" when the answer is not understood. The listing is kept in $W.
  local out=$W/queue-$1.out
  if ! "$BIN" queue list -c "$W/backstop.toml" >"$out" 2>&1; then
    echo "?"
  elif grep -qx 'queue is empty' "$out"; then
    echo 0
  else
    sed -n 's/^-- \([0-9]*\) message(s).*/\1/p' "$out" | grep . || echo "?"
  fi
}

postfix_queue_files() { # DIR: messages still in a Postfix peer's queue
  find "$1.queue/incoming" "$1.queue/active" "$1.queue/deferred" "$1.queue/hold" \
    "$1.queue/maildrop" -type f 2>/dev/null | wc -l
}

echo "work directory: $W"
# backstop's state_dir (and in queue mode its spool) lives in $W: say on what filesystem
FS=$(findmnt -n -o FSTYPE,SOURCE,TARGET -T "$W" 2>/dev/null | head -n 1 | tr -s ' ' ||
  stat -f -c '%T' "$W")
echo "mode: relay = \"$MODE\"; state_dir $W/bs-state on: $FS"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores; other busy processes skew the figures)"
echo "ports: backstop $P_BS, postfix gateway $P_PF, internal postfix $P_INT, sinks $S_BS (backstop) $S_PF (postfix) $S_INT (internal) $S_DIR (direct)"

# --- the sinks, the internal server, the Postfix gateway ---------------------------------------
start_sink sink-bs "$S_BS"
start_sink sink-pf "$S_PF"
start_sink sink-int "$S_INT"
start_sink sink-direct "$S_DIR"
echo "$RCPT" >"$W/users"
PEERS+=("$W/pf-int")
"$PEER" start "$W/pf-int" "$P_INT" internal example.test "$W/users" "$S_INT"
PEERS+=("$W/pf-gw")
"$PEER" start "$W/pf-gw" "$P_PF" gateway example.test "$S_PF" verify

# --- the DNS server backstop asks (SPF of the sender's domain) ---------------------------------
P_DNS=$(python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
/usr/sbin/dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
  --local=/test/ --listen-address=127.0.0.1 --bind-interfaces --pid-file= --log-facility=- \
  --port="$P_DNS" --txt-record="${FROM#*@},v=spf1 ip4:127.0.0.1 -all" >"$W/dnsmasq.out" 2>&1 &
PIDS+=($!)
# ready when it answers (a query for "client.test TXT"); if it never does, every SPF check would
# time out and the run would measure timeouts
python3 - "$P_DNS" <<'PY' || { echo "compare-postfix: dnsmasq did not answer on port $P_DNS" >&2; exit 1; }
import socket, sys, time
q = bytes([0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 6]) + b"client" + bytes([4]) + b"test" + bytes([0, 0, 16, 0, 1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.1)
for _ in range(50):
    try:
        s.sendto(q, ("127.0.0.1", int(sys.argv[1]))); s.recv(512); sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
echo "dns: dnsmasq on 127.0.0.1:$P_DNS (SPF for ${FROM#*@}: v=spf1 ip4:127.0.0.1 -all)"
if [ "${DNS_DELAY:-0}" != 0 ]; then
  # a slow resolver: every answer of dnsmasq handed on DNS_DELAY seconds late
  P_SLOW=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 - "$P_SLOW" "$P_DNS" "$DNS_DELAY" >"$W/slowdns.out" 2>&1 <<'PY' &
import socket, sys, threading, time
listen, upstream, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", listen))
def answer(q, client):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
    u.sendto(q, ("127.0.0.1", upstream))
    try:
        a = u.recv(4096)
    except OSError:
        return
    time.sleep(delay)
    s.sendto(a, client)
while True:
    q, client = s.recvfrom(4096)
    threading.Thread(target=answer, args=(q, client), daemon=True).start()
PY
  PIDS+=($!)
  echo "dns: every answer ${DNS_DELAY}s late, through 127.0.0.1:$P_SLOW"
  P_DNS=$P_SLOW
fi

# --- the shared store, when STORE=redis: a private redis-server on a free loopback port ---------
STORE_CFG=""
if [ "$STORE" = redis ]; then
  P_REDIS=$(python3 -c '
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly no --dir "$W" \
    >"$W/redis.out" 2>&1 &
  PIDS+=($!)
  wait_port "$P_REDIS"
  STORE_CFG="[store]
backend = \"redis\"
url = \"redis://127.0.0.1:$P_REDIS/0\""
  echo "store: redis-server $(redis-server --version | grep -o 'v=[0-9.]*') on 127.0.0.1:$P_REDIS"
fi

# --- backstop ----------------------------------------------------------------------------------
cat >"$W/backstop.toml" <<EOF
hostname = "gw.example.test"
state_dir = "$W/bs-state"

[[listen]]
addr = "127.0.0.1:$P_BS"

[[domain]]
name = "example.test"
recipients = ["callout:127.0.0.1:$P_INT"]
next_hop = "smtp:127.0.0.1:$S_BS"
relay = "$MODE"

[delivery]
resolver = "127.0.0.1:$P_DNS"

$STORE_CFG
EOF
if [ "$MODE" = queue ]; then # the delivery settings in force (defaults but the resolver)
  echo "backstop [delivery]: $("$BIN" check-config "$W/backstop.toml" |
    sed -n '/^\[delivery\]/,/^\[/p' | grep -E '^(destination_concurrency|max_connections|timeout|retry_min) ' |
    tr '\n' ' ' | sed 's/ $//')"
fi
RUST_LOG=${RUST_LOG:-info} "$BIN" serve --config "$W/backstop.toml" 2>"$W/backstop.log" &
BS_PID=$!
wait_port "$P_BS"

# --- warm the call-out caches: one message through each side -----------------------------------
warm() { # NAME PORT SINK: send one message until accepted (a first RCPT may be deferred while
  # the gateway verifies the address), then wait for it at the sink
  local base i
  base=$(sink_count "$3")
  for i in $(seq 1 60); do
    if swaks --server 127.0.0.1 --port "$2" --from "$FROM" --to "$RCPT" \
      --header "Subject: warm-up" >"$W/warm-$1.log" 2>&1; then
      wait_count "$3" $((base + 1))
      echo "$1: warm (accepted at attempt $i)"
      return 0
    fi
    sleep 1
  done
  echo "compare-postfix: $1 never accepted $RCPT; see $W/warm-$1.log" >&2
  return 1
}
warm backstop "$P_BS" sink-bs
"$BIN" verify "$RCPT" --config "$W/backstop.toml" | sed 's/^/  /'
warm postfix "$P_PF" sink-pf

# --- measured runs, alternating ----------------------------------------------------------------
RESULTS=$W/results
: >"$RESULTS"
run() { # SIDE RUN#: one measured run; appends a line to $RESULTS
  local side=$1 i=$2 port sink base t0 t1 t2 c0 c1 rc=0 got extra errs queued=0 tag
  case $side in
    backstop) port=$P_BS sink=sink-bs ;;
    postfix) port=$P_PF sink=sink-pf ;;
    direct) port=$S_DIR sink=sink-direct ;;
  esac
  tag="$side-$i"
  base=$(sink_count "$sink")
  c0=$(cpu_ticks "$BS_PID")
  t0=$(now)
  "$SOURCE" -c -s "$SESSIONS" -m "$N" -l "$SIZE" -f "$FROM" -t "$RCPT" "127.0.0.1:$port" \
    >"$W/source-$tag.out" 2>"$W/source-$tag.err" || rc=$?
  t1=$(now)
  wait_count "$sink" $((base + N)) || true
  t2=$(now)
  c1=$(cpu_ticks "$BS_PID")
  sleep 2 # anything more arriving now would be a duplicate
  got=$(( $(sink_count "$sink") - base ))
  [ "$side" = postfix ] && queued=$(postfix_queue_files "$W/pf-gw")
  if [ "$side" = backstop ] && [ "$MODE" = queue ]; then
    queued=$(backstop_queue "$tag")
  fi
  errs=$(grep -c . "$W/source-$tag.err" || true)
  python3 - "$side" "$i" "$N" "$t0" "$t1" "$t2" "$got" "$rc" "$errs" "$queued" \
    "$(( c1 - c0 ))" "$(getconf CLK_TCK)" >>"$RESULTS" <<'PY'
import sys
side, i, n, t0, t1, t2, got, rc, errs, queued, ticks, hz = sys.argv[1:]
n, t0, t1, t2, got = int(n), float(t0), float(t1), float(t2), int(got)
cpu = f"{int(ticks) / int(hz):.1f}" if side == "backstop" else "-"
print(side, i, n, f"{n / (t1 - t0):.0f}", f"{got / (t2 - t0):.0f}", f"{t2 - t0:.2f}", got,
      rc, errs, queued, cpu)
PY
  tail -n 1 "$RESULTS" | awk '{ printf "%-8s run %s: accepted %s msg/s, end-to-end %s msg/s (%ss), delivered %s/%s, smtp-source rc=%s, error lines %s, left in queue %s, backstop cpu %ss\n", $1, $2, $4, $5, $6, $7, $3, $8, $9, $10, $11 }'
}
for i in $(seq 1 "$RUNS"); do
  run direct "$i"
  run backstop "$i"
  run postfix "$i"
done

# --- report --------------------------------------------------------------------------------------
echo
echo "N=$N messages per run, $SESSIONS sessions, $SIZE-byte messages, $RUNS runs per side," \
  "backstop relay = \"$MODE\""
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def col(side, k): return [float(r[k]) for r in rows if r[0] == side]
print("| run | backstop msg/s | Postfix msg/s | ratio |")
print("|---|---|---|---|")
b, p = col("backstop", 4), col("postfix", 4)
for i, (x, y) in enumerate(zip(b, p), 1):
    print(f"| {i} | {x:.0f} | {y:.0f} | {x / y:.2f} |")
mb, mp = statistics.median(b), statistics.median(p)
print(f"| median | {mb:.0f} | {mp:.0f} | {mb / mp:.2f} |")
ab, ap = statistics.median(col("backstop", 3)), statistics.median(col("postfix", 3))
print(f"(accepted rate, until smtp-source ends: backstop median {ab:.0f} msg/s, Postfix median {ap:.0f} msg/s)")
d = col("direct", 4)
print(f"(ceiling, smtp-source straight to an smtp-sink: {', '.join(f'{x:.0f}' for x in d)} msg/s, "
      f"median {statistics.median(d):.0f}; backstop reaches {mb / statistics.median(d):.0%} of it)")
bad = [r for r in rows if int(r[6]) != int(r[2]) or r[7] != "0" or r[8] != "0" or r[9] != "0"]
for r in bad:
    print(f"ANOMALY {r[0]} run {r[1]}: delivered {r[6]}/{r[2]}, smtp-source rc={r[7]}, "
          f"error lines={r[8]}, left in queue={r[9]}")
if not bad:
    print("every run delivered exactly N messages to its sink; smtp-source reported no error")
PY

# what the logs say; backstop is stopped first (SIGTERM, as the exit trap would) so that its log
# is complete: at stop it logs how many spool records it made durable with how many syncs
stop_backstop() {
  local rc=0
  kill -TERM "$BS_PID" 2>/dev/null || { echo "ANOMALY backstop: not running at the end"; return 0; }
  for _ in $(seq 1 100); do kill -0 "$BS_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$BS_PID" 2>/dev/null && echo "ANOMALY backstop: did not stop within 10 s of SIGTERM"
  wait "$BS_PID" 2>/dev/null || rc=$?
  [ "$rc" = 0 ] || echo "ANOMALY backstop: exit status $rc after SIGTERM"
}
stop_backstop
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$MODE" = queue ]; then
  # "queued" is the acceptance into the spool; "attempt" the delivery
  echo "backstop log: $(grep -c 'event="queued"' "$W/backstop.log" || true) queued," \
    "$(grep -c 'event="not_delivered"' "$W/backstop.log" || true) not queued," \
    "attempts: $(grep -c 'event="attempt" .*result="delivered"' "$W/backstop.log" || true) delivered" \
    "$(grep -c 'event="attempt" .*result="deferred"' "$W/backstop.log" || true) deferred" \
    "$(grep -cE 'event="attempt" .*result="(failed|expired)"' "$W/backstop.log" || true) failed/expired," \
    "$(grep -c 'event="callout_probe"' "$W/backstop.log" || true) call-out probes," \
    "$(grep -cE ' (WARN|ERROR) ' "$W/backstop.log" || true) WARN/ERROR lines"
  # a message delivered twice has two delivered attempts under one id
  dups=$(grep 'event="attempt" .*result="delivered"' "$W/backstop.log" | grep -o ' id="[^"]*"' |
    sort | uniq -d | wc -l)
  [ "$dups" = 0 ] || echo "ANOMALY backstop: $dups queue ids delivered more than once"
  # no report was due: no sender needed SPF or DKIM
  checked=$(grep -c 'event="trust"' "$W/backstop.log" || true)
  [ "$checked" = 0 ] || echo "ANOMALY backstop: $checked senders checked though no report was due"
  grep -o 'spool: [0-9]* records made durable with [0-9]* syncs.*' "$W/backstop.log" ||
    echo "(no spool statistics in the backstop log)"
else
  echo "backstop log: $(grep -c 'event="delivered"' "$W/backstop.log" || true) recipients delivered," \
    "$(grep -c 'event="not_delivered"' "$W/backstop.log" || true) not delivered," \
    "$(grep -c 'event="rcpt_relay_refused"' "$W/backstop.log" || true) relay refusals," \
    "$(grep -c 'event="callout_probe"' "$W/backstop.log" || true) call-out probes," \
    "$(grep -cE ' (WARN|ERROR) ' "$W/backstop.log" || true) WARN/ERROR lines"
fi
grep -E ' (WARN|ERROR) |not_delivered|rcpt_relay_refused' "$W/backstop.log" | sort | uniq -c |
  sort -rn | head -n 5 || true
# late arrivals (a duplicate after a run's check) show in the sinks' final totals: warm-up + runs
for s in sink-bs sink-pf; do
  total=$(sink_count "$s")
  [ "$total" = $((1 + RUNS * N)) ] ||
    echo "ANOMALY $s: $total messages in total, expected $((1 + RUNS * N)) (warm-up + $RUNS x $N)"
done
echo "Postfix gateway log: $(grep -c 'status=sent' "$W/pf-gw/maillog" || true) sent," \
  "$(grep -cE 'status=(deferred|bounced)' "$W/pf-gw/maillog" || true) deferred/bounced," \
  "$(grep -cE ' (warning|error|fatal|panic): ' "$W/pf-gw/maillog" || true) warnings/errors"
for f in "$W"/source-*.err; do
  [ -s "$f" ] && { echo "$(basename "$f"):"; sort "$f" | uniq -c | sort -rn | head -n 5; }
done
true
