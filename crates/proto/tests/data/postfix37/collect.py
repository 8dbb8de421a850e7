#!/usr/bin/env python3
"""Copy the notices Postfix delivered into messages/ and write labels.tsv (called by make.sh).

    collect.py OUTDIR MAILDIR_NEW MAILLOG [MAILDIR_NEW MAILLOG ...]

A notice belongs to the test case named by "[case NAME]" in the returned message's Subject.
It is saved as messages/NAME.eml, or NAME-KIND.eml (KIND: bounce, delayed, success) when the
case produced more than one notice. Bytes are copied unchanged.

labels.tsv gets one row per recipient in a bounce or delay notice (from the notice's own
message/delivery-status part, in Postfix's order) and one message-level row per success notice;
the note holds the DSN Action, the SMTP reply code (if the Diagnostic-Code has one), the dsn=
and status= that Postfix logged for that recipient and queue ID.
"""
import email
import email.policy
import os
import re
import sys

out = sys.argv[1]
pairs = list(zip(sys.argv[2::2], sys.argv[3::2]))
SOURCE = "Postfix 3.7 on loopback (generated)"
LOGRE = re.compile(r"postfix37-\w+/(\w+)\[\d+\]: ([0-9A-F]+): to=<([^>]*)>.*?, dsn=([0-9.]+), "
                   r"status=(\w+) \((.*)\)$")

notices = []  # (case, kind, path, maillog lines)
for maildir, maillog in pairs:
    lines = open(maillog, encoding="utf-8", errors="replace").read().splitlines()
    for name in sorted(os.listdir(maildir)):
        path = os.path.join(maildir, name)
        raw = open(path, "rb").read()
        m = re.search(rb"\[case ([A-Za-z0-9.+-]+)\]", raw)
        if not m:
            print(f"WARNING: no case in {path}", file=sys.stderr)
            continue
        subj = email.message_from_bytes(raw, policy=email.policy.compat32)["Subject"] or ""
        kind = ("delayed" if subj.startswith("Delayed Mail") else
                "success" if subj.startswith("Successful Mail") else
                "bounce" if subj.startswith("Undelivered Mail") else "other")
        notices.append((m.group(1).decode(), kind, path, raw, lines))

count = {}
for case, kind, *_ in notices:
    count[case] = count.get(case, 0) + 1

os.makedirs(os.path.join(out, "messages"), exist_ok=True)
for f in os.listdir(os.path.join(out, "messages")):
    if f.endswith(".eml"):
        os.remove(os.path.join(out, "messages", f))

rows = []
for case, kind, path, raw, lines in notices:
    fname = f"messages/{case}.eml" if count[case] == 1 else f"messages/{case}-{kind}.eml"
    if os.path.exists(os.path.join(out, fname)):
        fname = fname[:-4] + "-2.eml"
    open(os.path.join(out, fname), "wb").write(raw)
    print(f"{fname}: {kind} <- {path}", file=sys.stderr)

    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    ds = next((p for p in msg.walk() if p.get_content_type() == "message/delivery-status"), None)
    if ds is None:
        print(f"WARNING: {fname} has no message/delivery-status part", file=sys.stderr)
        continue
    blocks = ds.get_payload()
    per_msg, per_rcpt = blocks[0], blocks[1:]
    qid = (per_msg["X-Postfix-Queue-ID"] or "").strip()
    expired = any(f": {qid}: " in l and "status=expired" in l for l in lines)
    for i, r in enumerate(per_rcpt, 1):
        addr = (r["Final-Recipient"] or "").split(";", 1)[-1].strip()
        action = (r["Action"] or "").strip()
        status = (r["Status"] or "").strip()
        diag = " ".join((r["Diagnostic-Code"] or "").split())
        rc = re.match(r"smtp;\s*(\d{3})\b", diag, re.I)
        logged = [m for m in (LOGRE.search(l) for l in lines) if m and m.group(2) == qid
                  and m.group(3).lower() == addr.lower()]
        want = {"failed": None, "delayed": "deferred", "relayed": "sent",
                "delivered": "sent"}.get(action)
        pick = [m for m in logged if want is None or m.group(5) == want]
        # a delay notice: prefer the deferral whose text is the notice's Diagnostic-Code
        if action == "delayed":
            text = diag.split(";", 1)[-1].strip()
            pick = [m for m in pick if text and text in m.group(6)] or pick
        lm = (pick[0] if action == "delayed" else pick[-1]) if pick else None
        note = [f"action={action}"]
        if rc:
            note.append(f"replycode={rc.group(1)}")
        if lm:
            note.append(f"dsn={lm.group(4)}")
            if expired and action == "failed":
                note.append("message status=expired, returned to sender")
            note.append(f"logged={lm.group(1)}: status={lm.group(5)} ({lm.group(6)})")
        else:
            print(f"WARNING: {fname}: no log line for {qid} {addr}", file=sys.stderr)
        if kind == "success":
            rows.append((fname, "", "", "", "", "0", SOURCE,
                         "; ".join(note[:1] + [f"recipient={addr}", f"status={status}"] + note[1:])))
        else:
            rows.append((fname, str(i), addr, status, "",
                         "1" if kind == "bounce" else "", SOURCE, "; ".join(note)))

rows.sort(key=lambda r: (r[0], int(r[1] or 0)))
with open(os.path.join(out, "labels.tsv"), "w") as f:
    f.write("file\trecipient_index\texpected_recipient\texpected_status\texpected_reason\t"
            "is_bounce\tsource\tnote\n")
    for r in rows:
        assert not any("\t" in c or "\n" in c for c in r)
        f.write("\t".join(r) + "\n")
print(f"{len(notices)} notices, {len(rows)} label rows", file=sys.stderr)
