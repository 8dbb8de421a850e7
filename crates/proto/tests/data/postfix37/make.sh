#!/bin/bash
# Regenerate this corpus: real delivery status notifications written by the Postfix installed on
# this machine (Debian Postfix 3.7). Needs root, postfix and python3. Not used by any test.
#
#   ./make.sh            writes messages/*.eml, labels.tsv (overwrites them) and make.log
#   KEEP=1 ./make.sh     the same, and keeps the scratch directory (/tmp/postfix37.*)
#
# It runs two private Postfix instances (alternate config directories under a fresh /tmp dir,
# listening on 127.0.0.1 only, registered in the system main.cf's alternate_config_directories
# for the run and unregistered at exit) and one scripted SMTP server (sink.py) as the remote
# side. The system's own Postfix instance is never started, stopped or reloaded. All mail
# domains are *.test; nothing leaves this machine (default_transport is error:).
#
#   instance "once":  maximal_queue_lifetime = 0 (every delivery is tried once; a temporary
#                     failure bounces at once)
#   instance "retry": maximal_queue_lifetime = 40s, delay_warning_time = 2s, retries every
#                     2-4s (delay warnings, then bounces after the queue lifetime)
#
# Bounces are returned to alice@example.test, delivered by virtual(8) into a Maildir; each
# notice's file is copied byte for byte into messages/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
run=$(mktemp -d /tmp/postfix37.XXXXXX)
chmod 755 "$run"
log() { echo "[$(date +%T)] $*" | tee -a "$here/make.log" >&2; }
: >"$here/make.log"

freeport() {
  python3 - "$@" <<'PY'
import random, socket, sys
taken = set(map(int, sys.argv[1:]))
while True:
    p = random.randint(20001, 29999)
    if p in taken:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
PY
}
sink_port=$(freeport)
closed_port=$(freeport "$sink_port")          # nothing listens here: "Connection refused"
once_port=$(freeport "$sink_port" "$closed_port")
retry_port=$(freeport "$sink_port" "$closed_port" "$once_port")
log "run dir $run; sink :$sink_port, closed :$closed_port, once :$once_port, retry :$retry_port"

sink_pid=
instances=()
cleanup() {
  set +e
  for dir in "${instances[@]}"; do
    if [ -f "$dir.queue/pid/master.pid" ]; then
      pid=$(tr -d ' \n' <"$dir.queue/pid/master.pid")
      timeout 10 postfix -c "$dir" stop >/dev/null 2>&1
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null
    fi
    (
      flock 9
      alt=$(postconf -h alternate_config_directories 2>/dev/null)
      kept=$(printf '%s\n' $alt | grep -vxF -- "$dir" | tr '\n' ' ' | sed 's/ *$//')
      [ "$kept" = "$alt" ] || postconf -e "alternate_config_directories = $kept" >/dev/null
    ) 9>/tmp/backstop-postfix-peer.lock
  done
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then log "stopped; run dir kept: $run"; else rm -rf "$run"; log "stopped"; fi
}
trap cleanup EXIT

python3 "$here/sink.py" "$sink_port" "$run/sink.log" &
sink_pid=$!

# start_instance NAME PORT EXTRA_MAIN_CF
start_instance() {
  local name=$1 port=$2 extra=$3 dir="$run/$1"
  mkdir -p "$dir" "$dir.queue" "$dir.data" "$run/$name.mail"
  chown postfix "$dir.data"
  chown 65534:65534 "$run/$name.mail"
  (
    flock 9
    alt=$(postconf -h alternate_config_directories 2>/dev/null || true)
    case " $alt " in *" $dir "*) ;; *) postconf -e "alternate_config_directories = $alt $dir" >/dev/null ;; esac
  ) 9>/tmp/backstop-postfix-peer.lock
  instances+=("$dir")
  printf '%s\n' 'alice@example.test alice/' 'bob@example.test bob/' >"$dir/vmailbox"
  cat >"$dir/transport" <<EOF
remote.test     smtp:[127.0.0.1]:$sink_port
refused.test    smtp:[127.0.0.1]:$closed_port
blocked.test    error:mail for this domain is not accepted
policy.test     error:5.7.1 this domain does not accept mail from example.test
retry.test      retry:temporarily not accepting mail
EOF
  cat >"$dir/main.cf" <<EOF
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
syslog_name = postfix37-$name
maillog_file = $dir/maillog
maillog_file_prefixes = /var, /dev/stdout, /tmp
biff = no
myhostname = mail.example.test
mydomain = example.test
myorigin = \$mydomain
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
smtputf8_enable = no
# local(8): mail.example.test, no aliases, no local_recipient_maps (unknown users bounce in local)
mydestination = \$myhostname, localhost.\$mydomain, localhost
local_recipient_maps =
alias_maps =
alias_database =
# virtual(8): alice@example.test (gets the notices) and bob@example.test, Maildirs
virtual_mailbox_domains = example.test
virtual_mailbox_maps = texthash:$dir/vmailbox
virtual_mailbox_base = $run/$name.mail
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
# everything else by transport_maps; no DNS, nothing leaves loopback
relayhost =
relay_domains =
transport_maps = texthash:$dir/transport
default_transport = error:outbound mail disabled
relay_transport = error:outbound mail disabled
smtp_dns_support_level = disabled
disable_dns_lookups = yes
smtp_host_lookup = native
$extra
EOF
  cat >"$dir/master.cf" <<EOF
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
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
  postfix -c "$dir" check 2>&1 | tee -a "$here/make.log" >&2 || true
  postfix -c "$dir" start >>"$here/make.log" 2>&1
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0; sleep 0.1; done
  log "instance $name did not start listening on $port (see $dir/maillog)"; exit 1
}

start_instance once "$once_port" "maximal_queue_lifetime = 0
bounce_queue_lifetime = 0"
start_instance retry "$retry_port" "maximal_queue_lifetime = 40s
bounce_queue_lifetime = 40s
delay_warning_time = 2s
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s"
log "$(postconf -c "$run/once" -h mail_version | sed 's/^/mail_version = /')"

submit() { log "submit $*"; python3 "$here/submit.py" "$@" 2>&1 | tee -a "$here/make.log" >&2; }
A=alice@example.test
# instance "once": CASE (file name)          RECIPIENTS
submit "$once_port" 550-no-enhanced-code      $A nosuch@remote.test
submit "$once_port" 550-5.1.1-user-unknown    $A unknown@remote.test
submit "$once_port" 552-5.2.2-mailbox-full    $A full@remote.test
submit "$once_port" 554-5.7.1-spam-after-data $A spam@remote.test
submit "$once_port" 550-5.7.1-multiline       $A multi@remote.test
submit "$once_port" two-recipients-both-fail  $A unknown@remote.test,full@remote.test
submit "$once_port" four-recipients-three-fail $A ok@remote.test,nosuch@remote.test,nosuchuser@mail.example.test,sales@blocked.test --sendmail "$run/once"
submit "$once_port" local-unknown-user        $A nosuchuser@mail.example.test
submit "$once_port" error-transport           $A someone@blocked.test --sendmail "$run/once"
submit "$once_port" error-transport-5.7.1     $A someone@policy.test --sendmail "$run/once"
submit "$once_port" retry-transport-once      $A someone@retry.test --sendmail "$run/once"
submit "$once_port" 450-4.2.0-tried-once      $A later@remote.test
submit "$once_port" connection-refused-once   $A someone@refused.test
submit "$once_port" ret-hdrs-envid-orcpt      $A unknown+2@remote.test --ret HDRS --envid case-ret-hdrs-0001 --notify FAILURE --orcpt
submit "$once_port" success-relayed           $A ok@remote.test --notify SUCCESS
submit "$once_port" success-delivered         $A bob@example.test --notify SUCCESS
submit "$once_port" success-and-failure       $A ok@remote.test,nosuch@remote.test --notify SUCCESS,FAILURE
# instance "retry": delay warnings, then bounces after maximal_queue_lifetime
submit "$retry_port" 451-4.7.1-greylisted     $A grey@remote.test
submit "$retry_port" 450-4.2.0-expired        $A later@remote.test
submit "$retry_port" connection-refused-expired $A someone@refused.test
submit "$retry_port" retry-transport-expired  $A someone@retry.test --sendmail "$run/retry"

# wait for both queues to drain (the retry instance needs maximal_queue_lifetime, 40s)
for i in $(seq 1 120); do
  busy=0
  for dir in "${instances[@]}"; do
    postqueue -c "$dir" -p 2>/dev/null | grep -q '^Mail queue is empty' || busy=1
  done
  [ "$busy" = 0 ] && break
  sleep 1
done
[ "$busy" = 0 ] || log "WARNING: queues not empty after 120s"
sleep 1

python3 "$here/collect.py" "$here" "$run/once.mail/alice/new" "$run/once/maillog" \
  "$run/retry.mail/alice/new" "$run/retry/maillog" 2>&1 | tee -a "$here/make.log" >&2
for f in once/maillog retry/maillog sink.log; do
  { echo "==== $f"; cat "$run/$f"; } >>"$here/make.log"
done
