#!/bin/bash
# Copied from ../shared/bench/postfix-peer.sh (with a lock for parallel starts).
# Run a real Postfix instance on loopback as a peer: the internal mail server behind backstop, or
# a Postfix gateway to compare backstop with. It never touches the system's own Postfix instance
# (it only registers its directory there) and never sends mail off this machine.
#
#   postfix-peer.sh start DIR PORT ROLE [OPTIONS]      ROLE is one of:
#     internal  DOMAIN USERS_FILE NEXTHOP_PORT  accepts DOMAIN for the users in USERS_FILE (one
#                                               address a line), rejects others at RCPT (550 5.1.1),
#                                               relays to 127.0.0.1:NEXTHOP_PORT (an smtp-sink)
#     gateway   DOMAIN NEXTHOP_PORT [verify]    relays DOMAIN to 127.0.0.1:NEXTHOP_PORT; with
#                                               "verify": reject_unverified_recipient (call-outs)
#   postfix-peer.sh stop DIR
#
# Needs root and the Debian package postfix (installed here when missing). Its tools smtp-source
# (load generator) and smtp-sink (a fast sink) live in /usr/sbin. Example, end to end:
#   /usr/sbin/smtp-sink -u nobody -c 127.0.0.1:2526 1024 &
#   d=$(mktemp -d); chmod 755 "$d"      # Postfix's own user must be able to read DIR
#   postfix-peer.sh start "$d/pf-gw" 2525 gateway example.test 2526
#   time /usr/sbin/smtp-source -c -s 20 -m 20000 -l 1024 -f a@client.test -t u@example.test 127.0.0.1:2525
#   postfix-peer.sh stop "$d/pf-gw"
set -eu
cmd=${1:?start|stop}; dir=${2:?DIR}

if [ "$cmd" = stop ]; then
  if [ -f "$dir.queue/pid/master.pid" ]; then
    pid=$(tr -d ' \n' <"$dir.queue/pid/master.pid")
    # bounded: a stop that hangs (seen once in `master -t`) must not hang the tests; the
    # master is killed below anyway
    timeout 10 postfix -c "$dir" stop >/dev/null 2>&1 || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # unregister the instance directory from the system main.cf (added at start)
  exec 9>/tmp/backstop-postfix-peer.lock
  flock 9
  alt=$(postconf -h alternate_config_directories 2>/dev/null || true)
  kept=$(printf '%s\n' $alt | grep -vxF -- "$dir" | tr '\n' ' ' | sed 's/ *$//')
  [ "$kept" = "$alt" ] || postconf -e "alternate_config_directories = $kept" >/dev/null
  exit 0
fi

port=${3:?PORT}; role=${4:?ROLE}; shift 4
if ! dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q 'install ok installed'; then
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  echo "postfix postfix/mailname string peer.example.test" | debconf-set-selections
  apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi
# keep the system instance harmless, and allow our instance directory. Several instances may
# start at once (parallel tests): serialise the edits of the system main.cf.
exec 9>/tmp/backstop-postfix-peer.lock
flock 9
postconf -e "inet_interfaces = loopback-only" "default_transport = error:disabled" \
  "relay_transport = error:disabled" "smtp_dns_support_level = disabled" >/dev/null
alt=$(postconf -h alternate_config_directories 2>/dev/null || true)
case " $alt " in *" $dir "*) ;; *) postconf -e "alternate_config_directories = $alt $dir" >/dev/null ;; esac

flock -u 9

case $role in
internal)
  domain=${1:?DOMAIN}; users=${2:?USERS_FILE}; next=${3:?NEXTHOP_PORT}
  mkdir -p "$dir"; sed 's/$/ OK/' "$users" >"$dir/valid"
  role_cf="relay_domains = $domain
relay_recipient_maps = texthash:$dir/valid
transport_maps = inline:{ $domain=smtp:[127.0.0.1]:$next }
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
mynetworks = 127.0.0.0/8" ;;
gateway)
  domain=${1:?DOMAIN}; next=${2:?NEXTHOP_PORT}
  role_cf="relay_domains = $domain
relay_recipient_maps =
transport_maps = inline:{ $domain=smtp:[127.0.0.1]:$next }
smtpd_relay_restrictions = reject_unauth_destination
mynetworks = 127.0.0.2/32"
  if [ "${3:-}" = verify ]; then
    role_cf="$role_cf
smtpd_recipient_restrictions = reject_unauth_destination, reject_unverified_recipient
unverified_recipient_reject_code = 550"
  fi ;;
*) echo "unknown role $role" >&2; exit 2 ;;
esac

mkdir -p "$dir" "$dir.queue" "$dir.data"; chown postfix "$dir.data"
cat >"$dir/main.cf" <<CF
compatibility_level = 3.6
config_directory = $dir
queue_directory = $dir.queue
data_directory = $dir.data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
syslog_name = peer-$(basename "$dir")
maillog_file = $dir/maillog
maillog_file_prefixes = /var, /dev/stdout, /tmp
myhostname = $(basename "$dir").example.test
myorigin = \$myhostname
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
relayhost =
default_transport = error:outbound mail disabled
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtputf8_enable = no
$role_cf
${PEER_MAIN_CF:-}
CF
cat >"$dir/master.cf" <<MF
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
MF
postfix -c "$dir" check >/dev/null 2>&1 || true

# A started instance must greet, not only listen: the master's socket takes connections
# before any smtpd runs, and on a loaded machine an instance was once seen listening and
# never greeting (its log holding nothing after "starting the Postfix mail system"). Such an
# instance is shown (its processes and where they wait), killed by PID and started again.
greets() {
  timeout 20 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$port"' || exit 1
    IFS= read -r line <&3 || exit 1; printf "QUIT\r\n" >&3; [[ $line == 220* ]]' 2>/dev/null
}
kill_instance() {
  local pid
  pid=$(tr -d ' \n' <"$dir.queue/pid/master.pid" 2>/dev/null) || return 0
  [ -n "$pid" ] || return 0
  echo "--- postfix peer on $port: master $pid and its children:" >&2
  ps -o pid,stat,wchan:24,etime,args --ppid "$pid" -p "$pid" >&2 || true
  for child in $(pgrep -P "$pid"); do kill -KILL "$child" 2>/dev/null || true; done
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$dir.queue/pid/master.pid"
}
for attempt in 1 2 3; do
  timeout 60 postfix -c "$dir" start >/dev/null 2>&1 || true
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  greets && exit 0
  echo "postfix peer on $port did not greet (attempt $attempt); its log:" >&2
  tail -n 20 "$dir/maillog" >&2 2>/dev/null || true
  kill_instance
done
echo "postfix peer did not start on $port (see $dir/maillog)" >&2; exit 1
