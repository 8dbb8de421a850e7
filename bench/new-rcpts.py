#!/usr/bin/env python3
"""Load for the benchmarks where every recipient is new: COUNT SMTP sessions to 127.0.0.1:PORT,
SESSIONS at a time, each one connection with EHLO, MAIL, one RCPT TO:<uN@example.test> (N from
FIRST on) and, unless --rcpt-only, DATA with a 1 KiB message; then QUIT.

Prints "accepted deferred refused seconds": the last reply of each session (to DATA's end, or
to the RCPT when it was not 250 or with --rcpt-only) counted by class, and the time until the
last session ended.

    new-rcpts.py PORT FIRST COUNT SESSIONS [--rcpt-only]
"""
import asyncio
import sys
import time

BODY = "Subject: unique\r\n\r\n" + ("x" * 76 + "\r\n") * 12 + "."


async def reply(r):
    while True:
        line = await r.readline()
        if not line or line[3:4] != b"-":
            return line.decode(errors="replace")


async def one(port, i, rcpt_only, tally):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await reply(r)

    async def cmd(c):
        w.write((c + "\r\n").encode())
        await w.drain()
        return await reply(r)

    await cmd("EHLO load.client.test")
    await cmd("MAIL FROM:<load@client.test>")
    last = await cmd(f"RCPT TO:<u{i}@example.test>")
    if last.startswith("250") and not rcpt_only:
        last = await cmd("DATA")
        if last.startswith("354"):
            last = await cmd(BODY)
    tally[last[:1]] = tally.get(last[:1], 0) + 1
    w.write(b"QUIT\r\n")
    await w.drain()
    w.close()


async def main():
    port, first, count, sessions = (int(a) for a in sys.argv[1:5])
    rcpt_only = "--rcpt-only" in sys.argv[5:]
    tally, queue = {}, asyncio.Queue()
    for i in range(first, first + count):
        queue.put_nowait(i)

    async def worker():
        while not queue.empty():
            await one(port, queue.get_nowait(), rcpt_only, tally)

    t0 = time.monotonic()
    await asyncio.gather(*[worker() for _ in range(sessions)])
    dt = time.monotonic() - t0
    print(tally.get("2", 0), tally.get("4", 0), tally.get("5", 0), f"{dt:.2f}")


asyncio.run(main())
