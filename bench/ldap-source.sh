#!/usr/bin/env bash
# Recipients verified against a directory: backstop's ldap: source (cold and warm cache) against
# Postfix's reject_unverified_recipient (cold), and against backstop's own list: source, in one
# run.
#
#   bench/ldap-source.sh       # N=2000 recipients per backstop round, N_PF=200 for Postfix,
#                              # USERS=20000 entries in the directory; 3 rounds
#
# The directory is a private OpenLDAP slapd (tests/support/slapd.sh: mdb, mail indexed, every
# search logged as slapd -d stats does) holding u0..u(USERS-1)@example.test. backstop asks it
# with the OpenLDAP filter, bound as the manager. The Postfix gateway verifies the same
# addresses with reject_unverified_recipient against an internal Postfix that knows them (its
# verify daemon probes through its queue; tests/support/postfix-peer.sh ... gateway ...
# verify). The list: side is backstop with the same addresses in a list file.
# What is measured is the RCPT decision: SESSIONS client sessions at a time, each one
# connection with EHLO, MAIL, one RCPT and QUIT, by a small Python client (no DATA: no message
# is relayed or queued, so the next hop plays no part on backstop's side; bench/new-rcpts.py
# --rcpt-only). A round's rate is the
# RCPTs answered 250 per second until the last session ends; deferred (4xx) and refused (5xx)
# answers are counted too.
# Each round: Postfix with N_PF addresses neither side has seen; backstop ldap: with N new
# addresses (cold: one search each); then those N again through backstop ldap: (warm: from the
# cache) and backstop list: (alternating which goes first). Every address exists, so the
# harvest defence and the probe budgets (which do not apply to directories) play no part.
# Last, once: the same load of N new addresses against a directory that takes connections and
# never answers (a dropping firewall, a hung server; default timeout 5s): RCPTs answered (all
# 451 4.4.3) per second.
# Environment: N, N_PF, USERS, RUNS (3), SESSIONS (20), BACKSTOP_BIN, KEEP=1. Needs root,
# postfix, slapd, ldap-utils.
set -eu
N=${N:-2000} N_PF=${N_PF:-200} USERS=${USERS:-20000} RUNS=${RUNS:-3} SESSIONS=${SESSIONS:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEER=$ROOT/tests/support/postfix-peer.sh
SLAPD=$ROOT/tests/support/slapd.sh
[ "$(id -u)" = 0 ] || { echo "ldap-source: must run as root (Postfix peers)" >&2; exit 2; }
[ $((RUNS * (N + N_PF))) -le "$USERS" ] || { echo "ldap-source: USERS must be at least RUNS * (N + N_PF)" >&2; exit 2; }
if [ -n "${BACKSTOP_BIN:-}" ]; then
  BIN=$BACKSTOP_BIN
else
  (cd "$ROOT" && cargo build --release -q -p backstop)
  BIN=$ROOT/target/release/backstop
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/ldap-source.XXXXXX")
chmod 755 "$W"
PIDS=() PEERS=() BS=()
cleanup() {
  set +e
  for p in "${BS[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  for d in "${PEERS[@]}"; do "$PEER" stop "$d"; done
  [ -d "$W/ldap" ] && "$SLAPD" stop "$W/ldap"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [ "${KEEP:-0}" = 1 ] && echo "work directory kept: $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT
read -r P_INT S_INT P_PF P_LDAP P_BL P_BT S_BS P_SIL P_BSIL < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(9)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
wait_port() {
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "ldap-source: nothing listening on port $1" >&2; exit 1
}

# the directory and the list hold the same users
python3 -c "import sys; sys.stdout.write(''.join(f'u{i}@example.test\n' for i in range($USERS)))" >"$W/users"
"$SLAPD" start "$W/ldap" "$P_LDAP" >/dev/null
ADD=(ldapadd -x -H "ldap://127.0.0.1:$P_LDAP" -D cn=admin,dc=example,dc=test -w secret)
"${ADD[@]}" -f "$ROOT/tests/support/ldap-example.ldif" >/dev/null
python3 - "$USERS" >"$W/users.ldif" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    print(f"dn: uid=u{i},ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\n"
          f"uid: u{i}\ncn: U {i}\nsn: U\nmail: u{i}@example.test\n")
PY
t0=$(date +%s)
"${ADD[@]}" -f "$W/users.ldif" >/dev/null
echo "directory: $USERS users loaded in $(( $(date +%s) - t0 ))s"

/usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$S_INT" 1024 >"$W/sink.out" 2>&1 &
PIDS+=($!)
/usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$S_BS" 1024 >"$W/sink-bs.out" 2>&1 &
PIDS+=($!)
wait_port "$S_INT"
PEERS+=("$W/pf-int")
PEER_MAIN_CF="default_process_limit = 200" "$PEER" start "$W/pf-int" "$P_INT" internal example.test "$W/users" "$S_INT"
PEERS+=("$W/pf-gw")
"$PEER" start "$W/pf-gw" "$P_PF" gateway example.test "$P_INT" verify

backstop() { # NAME PORT SOURCE [more TOML]
  cat >"$W/$1.toml" <<EOF
hostname = "gw.example.test"
state_dir = "$W/$1-state"
[[listen]]
addr = "127.0.0.1:$2"
[[domain]]
name = "example.test"
recipients = ["$3"]
next_hop = "smtp:127.0.0.1:$S_BS"
relay = "queue"
[delivery]
resolver = "127.0.0.1:9"
${4:-}
EOF
  RUST_LOG=info "$BIN" serve --config "$W/$1.toml" 2>"$W/$1.log" &
  BS+=($!)
}
backstop ldap "$P_BL" "ldap:corp" "[[ldap]]
name = \"corp\"
url = \"ldap://127.0.0.1:$P_LDAP\"
bind_dn = \"cn=admin,dc=example,dc=test\"
bind_password = \"secret\"
base = \"ou=people,dc=example,dc=test\"
filter = \"openldap\"
max_connections = $SESSIONS"
backstop list "$P_BT" "list:$W/users"
python3 -c '
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1024)
held = []
while True: held.append(s.accept()[0])' "$P_SIL" &
PIDS+=($!)
backstop silent "$P_BSIL" "ldap:corp" "[[ldap]]
name = \"corp\"
url = \"ldap://127.0.0.1:$P_SIL\"
base = \"ou=people,dc=example,dc=test\"
filter = \"openldap\""
wait_port "$P_BSIL"
wait_port "$P_BL"
wait_port "$P_BT"
wait_port "$P_PF"

load() { # PORT FIRST COUNT -> "accepted deferred refused seconds"
  python3 "$ROOT/bench/new-rcpts.py" "$1" "$2" "$3" "$SESSIONS" --rcpt-only
}

side() { # LABEL PORT FIRST COUNT [answered: count every answer, not only 250s]
  read -r ok deferred refused secs < <(load "$2" "$3" "$4")
  counted=$ok
  [ -z "${5:-}" ] || counted=$((ok + deferred + refused))
  rate=$(python3 -c "print(round($counted / $secs, 1))")
  echo "$1 round $i: $ok accepted, $deferred deferred, $refused refused in ${secs}s: $rate rcpt/s"
  echo "$1 $i $rate" >>"$W/results"
}

echo "N=$N (backstop) and N_PF=$N_PF (Postfix) recipients per round, $SESSIONS sessions, $RUNS rounds, $USERS users in the directory"
next=0
: >"$W/results"
for i in $(seq 1 "$RUNS"); do
  side postfix-cold "$P_PF" "$next" "$N_PF"
  next=$((next + N_PF))
  side ldap-cold "$P_BL" "$next" "$N"
  if [ $((i % 2)) = 1 ]; then
    side ldap-warm "$P_BL" "$next" "$N"
    side list "$P_BT" "$next" "$N"
  else
    side list "$P_BT" "$next" "$N"
    side ldap-warm "$P_BL" "$next" "$N"
  fi
  next=$((next + N))
done
i=1
side ldap-silent "$P_BSIL" "$next" "$N" answered
python3 - "$W/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {s: statistics.median(float(r[2]) for r in rows if r[0] == s)
       for s in ("postfix-cold", "ldap-cold", "ldap-warm", "list")}
print(f"median rcpt/s: Postfix reject_unverified_recipient (cold) {med['postfix-cold']:.1f}, "
      f"backstop ldap: cold {med['ldap-cold']:.1f}, warm {med['ldap-warm']:.1f}, "
      f"backstop list: {med['list']:.1f}")
rate = {(r[0], r[1]): float(r[2]) for r in rows}
pairs = sorted(100 * rate[('ldap-warm', i)] / rate[('list', i)]
               for (s, i) in rate if s == 'list')
print(f"ldap: cold vs Postfix cold: {med['ldap-cold'] / max(med['postfix-cold'], 1e-9):.1f}x "
      f"(target >= 20x); ldap: warm vs list: {100 * med['ldap-warm'] / med['list']:.1f} % "
      f"of the median (target >= 90 %); round by round: "
      f"{', '.join(f'{p:.0f} %' for p in pairs)} (median {statistics.median(pairs):.0f} %)")
silent = [float(r[2]) for r in rows if r[0] == 'ldap-silent']
print(f"directory silent: {silent[0]:.1f} RCPTs answered 451 per second")
PY
echo "silent directory: $(grep -c 'directory cannot be used' "$W/silent.log" || true) failure(s) logged," \
  "$(grep -c 'event="directory_search"' "$W/silent.log" || true) searches"
echo "backstop ldap: $(grep -c 'event="directory_search"' "$W/ldap.log" || true) directory searches;" \
  "slapd: $(grep -c ' SRCH base=' "$W/ldap/slapd.log" || true) searches"
