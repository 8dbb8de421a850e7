#!/bin/bash
# Run a private OpenLDAP slapd on loopback as the directory behind backstop's LDAP recipient
# source. It never touches the system's own slapd (if there is one): the instance has its own
# cn=config, database, certificates, PID file and log under DIR, and listens only on 127.0.0.1.
#
#   slapd.sh start DIR PORT [TLS_PORT]
#       Creates the instance under DIR the first time (an existing DIR is started again as it
#       is: same configuration, same data) and starts it on ldap://127.0.0.1:PORT and, with
#       TLS_PORT, on ldaps://127.0.0.1:TLS_PORT with StartTLS on PORT too. Prints the CA file
#       (DIR/tls/ca.pem) that signed its certificate for 127.0.0.1 and localhost.
#   slapd.sh stop DIR
#
# The directory: suffix dc=example,dc=test (empty: load entries with ldapadd), manager
# cn=admin,dc=example,dc=test with password "secret", schemas core, cosine, inetorgperson, nis,
# and a small local one (below) with mailAlternateAddress, proxyAddresses, userAccountControl,
# accountStatus and the auxiliary class backstopMailRecipient (which also allows mail, e.g. on
# a groupOfNames). Anonymous clients may read everything but passwords.
# slapd runs in the foreground with `-d stats` (one line per operation, each search with its
# filter) into DIR/slapd.log; its PID is in DIR/slapd.pid.
#
# Needs the Debian packages slapd and ldap-utils (installed here when missing, without a
# system directory: slapd/no_configuration). Example:
#   d=$(mktemp -d)
#   slapd.sh start "$d/ldap" 3890 6360
#   ldapadd -x -H ldap://127.0.0.1:3890 -D cn=admin,dc=example,dc=test -w secret -f tests/support/ldap-example.ldif
#   LDAPTLS_CACERT=$d/ldap/tls/ca.pem ldapsearch -x -ZZ -H ldap://127.0.0.1:3890 -b dc=example,dc=test '(mail=alice@example.test)'
#   slapd.sh stop "$d/ldap"
set -eu
cmd=${1:?start|stop}; dir=${2:?DIR}

# True while PID is our slapd, the one serving DIR (not a reused PID, not a zombie waiting for
# whoever adopted it: a zombie's cmdline is empty).
ours() { [ -n "$1" ] && tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" | grep -qF -- "$dir/slapd.d"; }
# True while PID exists and is not a zombie.
alive() { [ -e "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]; }

if [ "$cmd" = stop ]; then
  if [ -f "$dir/slapd.pid" ]; then
    pid=$(tr -d ' \n' <"$dir/slapd.pid")
    if ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do ours "$pid" || break; sleep 0.05; done
      ! ours "$pid" || kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do ours "$pid" || break; sleep 0.05; done
    fi
    rm -f "$dir/slapd.pid"
  fi
  exit 0
fi
[ "$cmd" = start ] || { echo "slapd.sh: unknown command $cmd" >&2; exit 2; }

port=${3:?PORT}; tls_port=${4:-}
if [ ! -x /usr/sbin/slapd ] || ! command -v ldapsearch >/dev/null || ! command -v ldapadd >/dev/null; then
  # several tests may start at once: one installs, the others wait for it
  exec 9>/tmp/backstop-slapd-install.lock
  flock 9
  if [ ! -x /usr/sbin/slapd ] || ! command -v ldapsearch >/dev/null; then
    # no system directory (nothing configured, nothing to start), no questions
    echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slapd ldap-utils >/dev/null
  fi
  flock -u 9; exec 9>&-
fi

conf="$dir/slapd.d"
if [ ! -d "$conf" ]; then
  mkdir -p "$dir/data" "$dir/tls"
  tls_conf=
  if [ -n "$tls_port" ]; then
    # a CA of its own, and a certificate for 127.0.0.1 and localhost signed by it
    (
      cd "$dir/tls"
      openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
        -subj "/CN=backstop test LDAP CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
      openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
        -subj "/CN=localhost" 2>/dev/null
      # libldap's own clients (ldapsearch) check a server named "localhost" against this
      # machine's hostname instead (its tls2.c), so that name is in the certificate too
      san="IP:127.0.0.1,DNS:localhost"
      h=$(hostname 2>/dev/null || true)
      case $h in ''|localhost|*[!A-Za-z0-9.-]*) ;; *) san="$san,DNS:$h" ;; esac
      printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
        "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" >server.ext
      openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
        -days 3650 -extfile server.ext -out server.pem 2>/dev/null
      rm -f server.csr
    )
    tls_conf="olcTLSCACertificateFile: $dir/tls/ca.pem
olcTLSCertificateFile: $dir/tls/server.pem
olcTLSCertificateKeyFile: $dir/tls/server.key"
  fi
  # olcLogLevel 0: nothing to syslog (the system journal); `-d stats` below writes the log.
  # OIDs under 1.3.6.1.4.1.32473 (IANA's example enterprise number, RFC 5612) for the
  # attributes of our own; Active Directory's for proxyAddresses and userAccountControl
  # (an INTEGER: filters may use the bitwise rule, (userAccountControl:1.2.840.113556.1.4.803:=2))
  cat >"$dir/config.ldif" <<LDIF
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: $dir/slapd.pid
olcArgsFile: $dir/slapd.args
olcLogLevel: 0
$tls_conf

dn: cn=module{0},cn=config
objectClass: olcModuleList
cn: module{0}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif

include: file:///etc/ldap/schema/cosine.ldif

include: file:///etc/ldap/schema/inetorgperson.ldif

include: file:///etc/ldap/schema/nis.ldif

dn: cn=backstop,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: backstop
olcAttributeTypes: ( 1.3.6.1.4.1.32473.1.1.1 NAME 'mailAlternateAddress'
  DESC 'another address the mailbox receives mail for'
  EQUALITY caseIgnoreIA5Match SUBSTR caseIgnoreIA5SubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{256} )
olcAttributeTypes: ( 1.3.6.1.4.1.32473.1.1.2 NAME 'accountStatus'
  DESC 'active or disabled'
  EQUALITY caseIgnoreIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{32} SINGLE-VALUE )
olcAttributeTypes: ( 1.2.840.113556.1.2.210 NAME 'proxyAddresses'
  DESC 'Active Directory: smtp:/SMTP: prefixed addresses'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15{1123} )
olcAttributeTypes: ( 1.2.840.113556.1.4.8 NAME 'userAccountControl'
  DESC 'Active Directory: account flags, 2 = disabled'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
olcObjectClasses: ( 1.3.6.1.4.1.32473.1.2.1 NAME 'backstopMailRecipient'
  DESC 'test: mail addresses and account state on any entry'
  SUP top AUXILIARY
  MAY ( mail \$ mailAlternateAddress \$ proxyAddresses \$ userAccountControl \$ accountStatus ) )

dn: olcDatabase={-1}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {-1}frontend
olcSizeLimit: 500

dn: olcDatabase={0}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {0}config
olcAccess: {0}to * by * none

dn: olcDatabase={1}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {1}mdb
olcDbDirectory: $dir/data
olcSuffix: dc=example,dc=test
olcRootDN: cn=admin,dc=example,dc=test
olcRootPW: $(slappasswd -s secret)
olcDbIndex: objectClass eq
olcDbIndex: mail,mailAlternateAddress,proxyAddresses eq
olcDbMaxSize: 67108864
olcAccess: {0}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {1}to * by * read
LDIF
  mkdir -p "$conf"
  if ! slapadd -n0 -F "$conf" -l "$dir/config.ldif" >"$dir/slapadd.log" 2>&1; then
    cat "$dir/slapadd.log" >&2
    rm -rf "$conf"
    echo "slapd.sh: slapadd could not build the configuration ($dir/config.ldif)" >&2
    exit 1
  fi
fi

urls="ldap://127.0.0.1:$port/"
[ -z "$tls_port" ] || urls="$urls ldaps://127.0.0.1:$tls_port/"
rm -f "$dir/slapd.pid"
# the log is kept across restarts: this run has started when one more "slapd starting" is in
# it (slapd logs that once its listeners are bound; it exits when a port is taken)
started=$(grep -c ' slapd starting$' "$dir/slapd.log" 2>/dev/null || true)
# in the foreground (-d: no fork), in a session of its own, as the calling user (root here)
setsid /usr/sbin/slapd -d stats -F "$conf" -h "$urls" </dev/null >>"$dir/slapd.log" 2>&1 &
pid=$!
echo "$pid" >"$dir/slapd.pid"
for _ in $(seq 1 150); do
  if ! alive "$pid"; then
    tail -20 "$dir/slapd.log" >&2
    echo "slapd.sh: slapd exited at start (see $dir/slapd.log)" >&2
    exit 1
  fi
  # then any LDAP answer will do (32, no such object, before the base entry is loaded)
  rc=1
  now=$(grep -c ' slapd starting$' "$dir/slapd.log" 2>/dev/null || true)
  if [ "${now:-0}" -gt "${started:-0}" ]; then
    rc=0
    ldapsearch -x -H "ldap://127.0.0.1:$port" -o nettimeout=2 -b dc=example,dc=test -s base \
      dn >/dev/null 2>&1 || rc=$?
  fi
  if [ "$rc" = 0 ] || [ "$rc" = 32 ]; then
    # slapd writes the same PID itself; ours was there first, for a stop during start-up
    [ -z "$tls_port" ] || echo "$dir/tls/ca.pem"
    exit 0
  fi
  sleep 0.1
done
! ours "$pid" || kill -KILL "$pid" 2>/dev/null || true
tail -20 "$dir/slapd.log" >&2
echo "slapd.sh: slapd did not answer on ldap://127.0.0.1:$port within 15 s (see $dir/slapd.log)" >&2
exit 1
