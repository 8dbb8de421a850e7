#!/usr/bin/env python3
"""Tiny scripted SMTP server: the "remote" side that Postfix relays to (loopback only).

    sink.py PORT LOGFILE

The reply to RCPT TO depends on the recipient's local part (the text after the last "+" is
ignored, so "nosuch+2@remote.test" behaves like "nosuch@remote.test"):

    nosuch   550 no such user here                        (no enhanced status code)
    unknown  550 5.1.1 <ADDR>: Recipient address rejected: User unknown
    full     552 5.2.2 Mailbox full
    later    450 4.2.0 try later
    grey     451 4.7.1 Greylisted, please try again later
    multi    550-5.7.1 ... (three-line reply)
    spam     250 at RCPT, then 554 5.7.1 Message rejected as spam after the end of DATA
    anything else: 250 2.1.5 Ok, and 250 2.0.0 Ok: queued after DATA

Every command and reply is appended to LOGFILE. No DSN extension is advertised.
"""
import asyncio
import itertools
import sys

PORT = int(sys.argv[1])
LOG = open(sys.argv[2], "a", buffering=1)
QUEUE_IDS = itertools.count(1)

MULTI = (
    "550-5.7.1 This message was rejected by local policy.\r\n"
    "550-5.7.1 Mail from your host is not accepted for this recipient;\r\n"
    "550 5.7.1 see https://remote.test/policy or contact postmaster@remote.test"
)


def rcpt_reply(addr):
    local = addr.split("@", 1)[0].split("+", 1)[0].lower()
    return {
        "nosuch": "550 no such user here",
        "unknown": f"550 5.1.1 <{addr}>: Recipient address rejected: User unknown",
        "full": "552 5.2.2 Mailbox full",
        "later": "450 4.2.0 try later",
        "grey": "451 4.7.1 Greylisted, please try again later",
        "multi": MULTI,
    }.get(local, "250 2.1.5 Ok")


def path_of(arg):
    # "TO:<a@b> NOTIFY=..." -> "a@b"
    start, end = arg.find("<"), arg.find(">")
    return arg[start + 1:end] if 0 <= start < end else arg.split(":", 1)[-1].strip()


async def session(reader, writer):
    peer = writer.get_extra_info("peername")

    async def say(text):
        LOG.write(f"{peer} S: {text!r}\n")
        writer.write(text.encode() + b"\r\n")
        await writer.drain()

    await say("220 mx.remote.test ESMTP test sink")
    rcpts = []
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            LOG.write(f"{peer} C: {cmd!r}\n")
            verb = cmd[:4].upper()
            if verb == "EHLO":
                await say("250-mx.remote.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
                          "250-ENHANCEDSTATUSCODES\r\n250 8BITMIME")
            elif verb == "HELO":
                await say("250 mx.remote.test")
            elif verb == "MAIL":
                rcpts = []
                await say("250 2.1.0 Ok")
            elif verb == "RCPT":
                addr = path_of(cmd[4:])
                reply = rcpt_reply(addr)
                if reply.startswith("2"):
                    rcpts.append(addr)
                await say(reply)
            elif verb == "DATA":
                if not rcpts:
                    await say("554 5.5.1 Error: no valid recipients")
                    continue
                await say("354 End data with <CR><LF>.<CR><LF>")
                size = 0
                while True:
                    data = await reader.readline()
                    if not data or data in (b".\r\n", b".\n"):
                        break
                    size += len(data)
                LOG.write(f"{peer} C: <{size} bytes of message>\n")
                if any(r.split("@")[0].split("+")[0].lower() == "spam" for r in rcpts):
                    await say("554 5.7.1 Message rejected as spam")
                else:
                    await say(f"250 2.0.0 Ok: queued as SINK{next(QUEUE_IDS):04d}")
                rcpts = []
            elif verb == "RSET":
                rcpts = []
                await say("250 2.0.0 Ok")
            elif verb == "NOOP":
                await say("250 2.0.0 Ok")
            elif verb == "QUIT":
                await say("221 2.0.0 Bye")
                break
            else:
                await say("502 5.5.2 Error: command not recognized")
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(session, "127.0.0.1", PORT)
    LOG.write(f"listening on 127.0.0.1:{PORT}\n")
    async with server:
        await server.serve_forever()


asyncio.run(main())
