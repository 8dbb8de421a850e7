#!/usr/bin/env python3
"""Submit one test message to a loopback Postfix smtpd.

    submit.py PORT CASE FROM RCPT[,RCPT...] [--notify SUCCESS|FAILURE,DELAY|...] [--ret HDRS|FULL]
              [--envid ID] [--orcpt] [--sendmail CONFIG_DIR]

With --sendmail the message goes in through Postfix's sendmail command (postdrop, pickup) of the
instance in CONFIG_DIR instead of SMTP (PORT is then unused): smtpd refuses at RCPT a recipient
whose transport is error:, so those cases are submitted locally.

The Subject carries "[case CASE]" so that make.sh can find the notice Postfix returns for it.
"""
import argparse
import smtplib
import subprocess
from email.utils import formatdate

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("case")
p.add_argument("sender")
p.add_argument("rcpts")
p.add_argument("--notify")
p.add_argument("--ret")
p.add_argument("--envid")
p.add_argument("--orcpt", action="store_true")
p.add_argument("--sendmail")
a = p.parse_args()
rcpts = a.rcpts.split(",")

msg = (
    f"From: Alice Example <{a.sender}>\r\n"
    f"To: {', '.join(rcpts)}\r\n"
    f"Subject: Test message [case {a.case}]\r\n"
    f"Date: {formatdate(localtime=False)}\r\n"
    f"Message-ID: <{a.case}.postfix37@client.example.test>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n"
    f"This is test message {a.case}, sent to a Postfix 3.7 instance on loopback\r\n"
    "to make it write a delivery status notification.\r\n"
)

if a.sendmail:
    cmd = ["/usr/sbin/sendmail", "-C", a.sendmail, "-i", "-f", a.sender]
    if a.notify:
        cmd += ["-N", a.notify.lower()]
    if a.ret:
        cmd += ["-R", a.ret.lower()]
    if a.envid:
        cmd += ["-V", a.envid]
    subprocess.run(cmd + ["--"] + rcpts, input=msg.replace("\r\n", "\n").encode(), check=True)
    print(f"{a.case}: submitted with sendmail -C {a.sendmail}")
    raise SystemExit(0)

mail_opts, rcpt_opts = [], []
if a.ret:
    mail_opts.append(f"RET={a.ret}")
if a.envid:
    mail_opts.append(f"ENVID={a.envid}")
if a.notify:
    rcpt_opts.append(f"NOTIFY={a.notify}")

with smtplib.SMTP("127.0.0.1", a.port, local_hostname="client.example.test", timeout=30) as s:
    s.ehlo()
    s.mail(a.sender, mail_opts)
    for r in rcpts:
        opts = list(rcpt_opts)
        if a.orcpt:
            xtext = "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}"
                            for c in r)
            opts.append(f"ORCPT=rfc822;{xtext}")
        code, text = s.rcpt(r, opts)
        if code >= 300:
            raise SystemExit(f"{a.case}: RCPT {r} refused by Postfix: {code} {text!r}")
    code, text = s.data(msg.encode())
    print(f"{a.case}: {code} {text.decode()}")
