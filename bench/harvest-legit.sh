#!/usr/bin/env bash
# A legitimate client's latency while another client harvests addresses.
#
#   bench/harvest-legit.sh            # 60 s of harvest, 20 harvesting sessions
#
# backstop in front of an internal Postfix (call-out and in-session relay to it; it knows one
# user, alice@example.test), on 127.0.0.1 and ::1. A harvester on 127.0.0.1 runs SESSIONS
# sessions at once, each asking RCPT for random addresses as fast as the answers come, a new
# session whenever one is closed, for SECONDS (or until HARVEST addresses were asked). A
# legitimate client on ::1 (another process, so the harvester's load cannot slow it on the
# client side) sends a message to alice every 50 ms throughout: one session, MAIL, RCPT, DATA.
# Printed: the legitimate client's RCPT and whole-transaction latency (p50, p99, max) before
# and during the harvest, and what the harvester got. backstop runs with its defaults
# (tarpit, cut-off, block, probe budgets). Environment: HARVEST_SECONDS (60), SESSIONS, HARVEST (10000),
# BACKSTOP_BIN, KEEP=1. Needs root and postfix.
set -eu
SECS=${HARVEST_SECONDS:-60} SESSIONS=${SESSIONS:-20} HARVEST=${HARVEST:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEER=$ROOT/tests/support/postfix-peer.sh
[ "$(id -u)" = 0 ] || { echo "harvest-legit: must run as root (Postfix peer)" >&2; exit 2; }
if [ -n "${BACKSTOP_BIN:-}" ]; then
  BIN=$BACKSTOP_BIN
else
  (cd "$ROOT" && cargo build --release -q -p backstop)
  BIN=$ROOT/target/release/backstop
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/harvest-legit.XXXXXX")
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
read -r P_INT S_INT P_BS < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "harvest-legit: nothing listening on port $1" >&2; exit 1
}
echo alice@example.test >"$W/users"
/usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$S_INT" 1024 >"$W/sink.out" 2>&1 &
PIDS+=($!)
wait_port "$S_INT"
PEERS+=("$W/pf-int")
"$PEER" start "$W/pf-int" "$P_INT" internal example.test "$W/users" "$S_INT"
cat >"$W/backstop.toml" <<EOF
hostname = "gw.example.test"
state_dir = "$W/state"
[[listen]]
addr = "127.0.0.1:$P_BS"
[[listen]]
addr = "[::1]:$P_BS"
[[domain]]
name = "example.test"
recipients = ["callout:127.0.0.1:$P_INT"]
next_hop = "smtp:127.0.0.1:$P_INT"
[delivery]
resolver = "127.0.0.1:9"
EOF
RUST_LOG=info "$BIN" serve --config "$W/backstop.toml" 2>"$W/backstop.log" &
BS_PID=$!
wait_port "$P_BS"

cat >"$W/legit.py" <<'PY'
import asyncio, statistics, sys, time
port, before, during = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
async def reply(r):
    while True:
        l = await r.readline()
        if not l or l[3:4] != b"-":
            return l.decode(errors="replace")
async def one():
    t0 = time.monotonic()
    r, w = await asyncio.open_connection("::1", port)
    await reply(r)
    async def cmd(c):
        w.write((c + "\r\n").encode()); await w.drain(); return await reply(r)
    await cmd("EHLO friend.test"); await cmd("MAIL FROM:<f@friend.test>")
    t1 = time.monotonic()
    rc = await cmd("RCPT TO:<alice@example.test>")
    t2 = time.monotonic()
    await cmd("DATA"); end = await cmd("Subject: hi\r\n\r\nhello\r\n.")
    await cmd("QUIT"); w.close()
    assert rc.startswith("250") and end.startswith("250"), (rc, end)
    return t2 - t1, time.monotonic() - t0
def show(name, xs):
    rc = sorted(x[0] * 1000 for x in xs); tx = sorted(x[1] * 1000 for x in xs)
    p = lambda v, q: v[min(len(v) - 1, int(len(v) * q))]
    print(f"legitimate client, {name}: {len(xs)} messages; RCPT p50 {p(rc, .5):.1f} ms, "
          f"p99 {p(rc, .99):.1f} ms, max {rc[-1]:.1f} ms; transaction p50 {p(tx, .5):.1f} ms, "
          f"p99 {p(tx, .99):.1f} ms, max {tx[-1]:.1f} ms")
async def main():
    start = time.monotonic()
    alone, harvest = [], []
    while time.monotonic() < start + before + during:
        await asyncio.sleep(0.05)
        phase = alone if time.monotonic() < start + before else harvest
        phase.append(await one())
    show("alone", alone); show("during the harvest", harvest)
asyncio.run(main())
PY
cat >"$W/harvest.py" <<'PY'
import asyncio, random, sys, time
port, secs, sessions, limit = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
counts, asked = {}, [0]
async def reply(r):
    while True:
        l = await r.readline()
        if not l or l[3:4] != b"-":
            return l.decode(errors="replace")
async def session(end):
    while time.monotonic() < end and asked[0] < limit:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        if not (await reply(r)).startswith("220"):
            counts["refused at connect"] = counts.get("refused at connect", 0) + 1
            w.close(); await asyncio.sleep(0.01); continue
        async def cmd(c):
            w.write((c + "\r\n").encode()); await w.drain(); return await reply(r)
        await cmd("EHLO h.test"); await cmd("MAIL FROM:<h@h.test>")
        while time.monotonic() < end and asked[0] < limit:
            asked[0] += 1
            rc = await cmd(f"RCPT TO:<r{random.getrandbits(48):x}@example.test>")
            counts[rc[:3] or "closed"] = counts.get(rc[:3] or "closed", 0) + 1
            if not rc or rc.startswith("421"):
                break
        w.close()
async def main():
    end = time.monotonic() + secs
    await asyncio.gather(*[session(end) for _ in range(sessions)])
    print(f"harvester: {asked[0]} addresses asked in {secs:.0f} s; answers {counts}")
asyncio.run(main())
PY
python3 "$W/legit.py" "$P_BS" 5 "$SECS" &
LEGIT=$!
sleep 5
python3 "$W/harvest.py" "$P_BS" "$SECS" "$SESSIONS" "$HARVEST"
wait "$LEGIT"
echo "backstop: $(grep -c 'event="callout_probe"' "$W/backstop.log" || true) probes," \
  "$(grep -c 'event="harvest_cut_off"' "$W/backstop.log" || true) sessions cut off," \
  "$(grep -c 'event="client_blocked"' "$W/backstop.log" || true) blocks"
