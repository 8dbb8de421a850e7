#!/usr/bin/env python3
"""Reads one delivery report with Python's stdlib `email` package; prints what it found.

Used by tests/dsn_parsers.rs. Output: one fact per line, fields separated by tabs:

    type            multipart/report
    report-type     delivery-status
    header          NAME    VALUE           (top-level Subject, To, In-Reply-To, ...)
    part            CONTENT-TYPE    CTE     (each body part of the report, in order)
    defects         N                       (email's parse defects, over every part)
    notification    FIRST LINE              (part 1, decoded by its charset)
    per-message     NAME    VALUE
    recipient       ADDR-TYPE   ADDRESS ACTION  STATUS
    returned        NAME    VALUE           (the returned headers of the original)

message/delivery-status parts come out of `email` as a list of header blocks. The stdlib has
no special case for RFC 6533's message/global-delivery-status: it parses it like any message/*
part, as one message whose header is the per-message block and whose body holds the
per-recipient blocks, so those are split and parsed here.
"""

import email
import email.parser
import email.policy
import re
import sys

POLICY = email.policy.default


def clean(value):
    return re.sub(r"[\t\r\n]+", " ", str(value)).strip()


def fact(*fields):
    print("\t".join(clean(f) for f in fields))


def status_blocks(part):
    """The per-message block, then the per-recipient blocks, as header mappings."""
    payload = part.get_payload()
    if part.get_content_type() == "message/delivery-status":
        return payload
    (sub,) = payload  # message/global-delivery-status: one message
    body = sub.get_payload(decode=True).decode("utf-8")  # the raw 8bit bytes
    parser = email.parser.HeaderParser(policy=POLICY)
    rest = [parser.parsestr(b) for b in re.split(r"\r?\n\r?\n", body.strip()) if b.strip()]
    return [sub] + rest


def returned_headers(part):
    if part.get_content_type() == "message/global-headers":
        (sub,) = part.get_payload()
        return sub
    text = part.get_payload(decode=True).decode("utf-8", "replace")
    return email.parser.HeaderParser(policy=POLICY).parsestr(text)


def main(path):
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=POLICY)
    fact("type", msg.get_content_type())
    fact("report-type", msg.get_param("report-type") or "")
    for name in ("Subject", "From", "To", "In-Reply-To", "References", "Auto-Submitted"):
        fact("header", name, msg.get(name, ""))
    parts = msg.get_payload()
    for p in parts:
        fact("part", p.get_content_type(), p.get("Content-Transfer-Encoding", ""))
    fact("defects", sum(len(p.defects) for p in msg.walk()))
    fact("notification", parts[0].get_content().splitlines()[0])
    blocks = status_blocks(parts[1])
    for name, value in blocks[0].items():
        fact("per-message", name, value)
    for b in blocks[1:]:
        addr_type, _, addr = str(b["Final-Recipient"]).partition(";")
        fact("recipient", addr_type.strip().lower(), addr.strip(), b["Action"], b["Status"])
    returned = returned_headers(parts[2])
    for name in ("Subject", "Message-ID"):
        fact("returned", name, returned.get(name, ""))


if __name__ == "__main__":
    main(sys.argv[1])
