"""Verifies every DKIM-Signature of the message on standard input with dkimpy (Debian's
python3-dkim), the keys looked up on the DNS server at 127.0.0.1:PORT only.

Prints one line per signature: "pass" or "fail", then its a=, d= and s=. Exits 0 when there
is at least one signature and every one passes, 1 otherwise."""
import re
import sys

import dkim
import dns.resolver

port = int(sys.argv[1])
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = port


def txt(name, timeout=5):
    """The TXT record at name, its strings joined (what dkimpy's own lookup returns)."""
    if isinstance(name, bytes):
        name = name.decode()
    try:
        answer = resolver.resolve(name, "TXT", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    return b"".join(list(answer)[0].strings)


message = sys.stdin.buffer.read()
d = dkim.DKIM(message)
# the message's own signatures, not those of a message quoted inside it
head = re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]
count = len(re.findall(rb"(?im)^DKIM-Signature:", head))
ok = count > 0
for i in range(count):
    passed = d.verify(idx=i, dnsfunc=txt)
    tags = d.signature_fields if hasattr(d, "signature_fields") else {}
    a = tags.get(b"a", b"?").decode()
    dom = tags.get(b"d", b"?").decode()
    sel = tags.get(b"s", b"?").decode()
    print(f"{'pass' if passed else 'fail'} a={a} d={dom} s={sel}")
    ok = ok and passed
sys.exit(0 if ok else 1)
