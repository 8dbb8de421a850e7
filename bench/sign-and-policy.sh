#!/usr/bin/env bash
# What DKIM signing and MTA-STS policy lookups cost in queue mode, warm caches, in one run:
# the same backstop binary, two configurations side by side, rounds alternating.
#
#   bench/sign-and-policy.sh              # N=5000 messages per round, 5 rounds per side
#   N=1000 RUNS=2 bench/sign-and-policy.sh
#
# Both sides: smtp-source (a relay client, 127.0.0.1) -> backstop, which queues each message
# (state_dir on disk, fdatasync per batch) and delivers it to partner.test's MX host (a
# dnsmasq on loopback gives the MX record; the host is an smtp-sink).
#   plain:  no [[dkim]], mta_sts = false.
#   signed: [[dkim]] RSA-2048 and Ed25519 keys for example.test (both sign every message:
#           two signatures each), mta_sts = true with partner.test publishing a policy (its
#           _mta-sts record in dnsmasq, the policy file on an HTTPS server with a test CA,
#           mode "testing" so the sink needs no certificate): every new connection asks the
#           TXT record and uses the policy cached after the first fetch.
# A round is timed from the first message sent until the side's sink has counted all N.
# Prints every round (throughput, and backstop's CPU time per message from /proc: a second
# view when other load on the machine makes throughput jump), the medians and signed/plain.
# Environment: N (5000), RUNS (5), SESSIONS (20), SIZE (bytes per message, 4096), SIGN (the
# signed side's keys: both, rsa, ed25519, or none: MTA-STS alone), KEEP=1 (keep the work
# directory), BACKSTOP_BIN (skip the build), TMPDIR (default /var/tmp: not tmpfs, so the fsyncs are real). Needs root,
# postfix (smtp-source, smtp-sink), dnsmasq, openssl, python3. Everything it starts is
# stopped by its exit trap, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-5000} RUNS=${RUNS:-5} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-4096} SIGN=${SIGN:-both}
W=$(mktemp -d "${TMPDIR:-/var/tmp}/sign-and-policy.XXXXXX")
chmod 755 "$W"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-}" = 1 ] && echo "kept $W" || rm -rf "$W"
}
trap cleanup EXIT
if [ -z "${BACKSTOP_BIN:-}" ]; then
  cargo build --release -q -p backstop
  BACKSTOP_BIN=target/release/backstop
fi
BIN=$(realpath "$BACKSTOP_BIN")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }

# a test CA and the policy host's certificate
(
  cd "$W"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
    -subj "/CN=bench CA" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout sts.key -out sts.csr \
    -subj "/CN=mta-sts.partner.test" 2>/dev/null
  printf 'subjectAltName=DNS:mta-sts.partner.test\n' >ext.cnf
  openssl x509 -req -in sts.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out sts.pem \
    -days 2 -extfile ext.cnf 2>/dev/null
  printf 'version: STSv1\r\nmode: testing\r\nmx: mx.partner.test\r\nmax_age: 86400\r\n' >policy.txt
)
python3 crates/backstop/tests/support/https_file.py "$W/sts.pem" "$W/sts.key" \
  /.well-known/mta-sts.txt "$W/policy.txt" >"$W/https.port" 2>"$W/https.log" &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$W/https.port" ] && break; sleep 0.1; done
sts_port=$(cat "$W/https.port")

dns_port=$(free_port)
/usr/sbin/dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
  --local=/test/ --listen-address=127.0.0.1 --bind-interfaces --pid-file= \
  --port="$dns_port" --mx-host=partner.test,mx.partner.test,10 \
  --host-record=mx.partner.test,127.0.0.1 --host-record=mta-sts.partner.test,127.0.0.1 \
  "--txt-record=_mta-sts.partner.test,v=STSv1; id=bench1" 2>"$W/dnsmasq.log" &
pids+=($!)

echo "load@example.test" >"$W/users.txt"
start() { # side mta_sts dkim-tables -> sets port_$side
  local side=$1 sts=$2 dkim=$3 sink smtp
  sink=$(free_port); smtp=$(free_port)
  mkdir -p "$W/$side"
  /usr/sbin/smtp-sink -c -u nobody "127.0.0.1:$sink" 1024 >"$W/$side/sink.out" 2>&1 &
  pids+=($!)
  cat >"$W/$side/backstop.toml" <<EOF
hostname = "mx.example.test"
state_dir = "$W/$side/state"
[[listen]]
addr = "127.0.0.1:$smtp"
relay_from = ["127.0.0.1"]
[[domain]]
name = "example.test"
recipients = ["list:$W/users.txt"]
next_hop = "maildir:$W/$side/mail"
$dkim
[delivery]
mta_sts = $sts
smtp_port = $sink
tls_ca = "$W/ca.pem"
mta_sts_port = $sts_port
[dns]
resolver = "127.0.0.1:$dns_port"
EOF
  if [ -n "$dkim" ]; then
    "$BIN" dkim show --config "$W/$side/backstop.toml" >"$W/$side/records.txt"
  fi
  RUST_LOG=info "$BIN" serve --config "$W/$side/backstop.toml" 2>"$W/$side/backstop.log" &
  pids+=($!)
  eval "pid_$side=$!"
  wait_port "$smtp"; wait_port "$sink"
  eval "port_$side=$smtp"
}
RSA='[[dkim]]
domain = "example.test"
selector = "r1"'
ED='[[dkim]]
domain = "example.test"
selector = "e1"
algorithm = "ed25519"'
case $SIGN in
  both) keys="$RSA
$ED" ;;
  rsa) keys=$RSA ;;
  ed25519) keys=$ED ;;
  none) keys="" ;;
  *) echo "sign-and-policy: SIGN must be both, rsa, ed25519 or none" >&2; exit 2 ;;
esac
start plain false ""
start signed true "$keys"

# smtp-sink -c prints a running count; the last number is the total so far
delivered() { tr '\r' '\n' <"$W/$1/sink.out" | grep -o '[0-9]\+' | tail -1 || echo 0; }

# CPU time (user + system, clock ticks) backstop has used so far
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # side -> prints msg/s and backstop's CPU microseconds per message
  local side=$1 port pid before t0 t1 want c0 c1
  eval "port=\$port_$side; pid=\$pid_$side"
  c0=$(cpu "$pid")
  before=$(delivered "$side"); before=${before:-0}
  want=$((before + N))
  t0=$(date +%s.%N)
  /usr/sbin/smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -f load@example.test \
    -t load@partner.test "127.0.0.1:$port" 2>>"$W/$side/source.err"
  for _ in $(seq 1 6000); do
    [ "$(delivered "$side")" -ge "$want" ] && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  [ "$(delivered "$side")" -ge "$want" ] || { echo "side $side: stuck at $(delivered "$side") of $want" >&2; exit 1; }
  c1=$(cpu "$pid")
  python3 -c "print(round($N / ($t1 - $t0)), round(($c1 - $c0) * 1e6 / $(getconf CLK_TCK) / $N))"
}

echo "binary: $BIN"
echo "N=$N messages per round, $SESSIONS sessions, $SIZE bytes, $RUNS rounds each, alternating; queue mode, MX delivery; signed side: keys $SIGN, MTA-STS on"
rp=() rs=()
run plain >/dev/null; run signed >/dev/null   # warm-up: keys loaded, MX and policy cached
rcp=() rcs=()
for i in $(seq 1 "$RUNS"); do
  read -r p cp <<<"$(run plain)"; read -r s cs <<<"$(run signed)"
  rp+=("$p"); rs+=("$s"); rcp+=("$cp"); rcs+=("$cs")
  echo "round $i: plain $p msg/s ($cp us CPU/msg), signed+MTA-STS $s msg/s ($cs us CPU/msg)"
done
python3 - "${rp[*]}" "${rs[*]}" "${rcp[*]}" "${rcs[*]}" <<'PY'
import statistics, sys
p, s, cp, cs = ([int(x) for x in a.split()] for a in sys.argv[1:5])
mp, ms = statistics.median(p), statistics.median(s)
print(f"median: plain {mp:.0f} msg/s, signed+MTA-STS {ms:.0f} msg/s; signed/plain = {ms / mp:.3f} (cost {100 * (1 - ms / mp):.1f} %)")
mcp, mcs = statistics.median(cp), statistics.median(cs)
print(f"backstop CPU per message (median): plain {mcp:.0f} us, signed+MTA-STS {mcs:.0f} us; extra {100 * (mcs / mcp - 1):.1f} %")
PY
# what each side did: signatures made and the policy used, from the logs
signed=$(grep -c 'result="signed"' "$W/signed/backstop.log" || true)
both=$(grep -c 'r1 (rsa), e1 (ed25519)' "$W/signed/backstop.log" || true)
echo "openssl speed on this machine (one core, signatures/s): $(openssl speed -seconds 1 rsa2048 2>/dev/null | awk '/^rsa 2048/ {print "RSA-2048 " $6}'), $(openssl speed -seconds 1 ed25519 2>/dev/null | awk '/Ed25519\)/ {print "Ed25519 " $7}')"
fetched=$(grep -c 'MTA-STS policy fetched' "$W/signed/backstop.log" || true)
plainsig=$(grep -c 'event="dkim"' "$W/plain/backstop.log" || true)
echo "signed side: $signed messages signed ($both with both keys), policy fetched $fetched time(s), $(grep -c . "$W/https.log" || true) HTTPS request(s)"
echo "plain side: $plainsig DKIM events"
for s in plain signed; do
  echo "side $s: smtp-source error lines $(grep -c . "$W/$s/source.err" || true), WARN/ERROR log lines $(grep -c -E ' (WARN|ERROR) ' "$W/$s/backstop.log" || true)"
done
