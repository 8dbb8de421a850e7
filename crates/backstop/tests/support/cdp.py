"""Opens a page in real headless Chromium through the DevTools protocol, waits for it to
load, evaluates a JavaScript expression in it and saves a full-page screenshot.

usage: cdp.py URL SCREENSHOT.png EXPRESSION   (prints the expression's value as JSON)

Chromium talks to 127.0.0.1 only: the page's URL is the test's, and the flags turn off every
background connection (updates, sync, safe browsing, ...).
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket  # Debian python3-websocket

url, shot, expression = sys.argv[1], sys.argv[2], sys.argv[3]
profile = tempfile.mkdtemp(prefix="backstop-cdp-")
chromium = subprocess.Popen(
    [
        "/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-default-apps", "--disable-extensions",
        "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        "--remote-allow-origins=*", f"--user-data-dir={profile}", "--window-size=1280,2000",
        "about:blank",
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
try:
    portfile = os.path.join(profile, "DevToolsActivePort")
    for _ in range(600):
        if os.path.exists(portfile) and open(portfile).read().strip():
            break
        time.sleep(0.1)
    port = int(open(portfile).read().split()[0])
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
    page = next(t for t in targets if t["type"] == "page")
    ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
    events = []
    seq = [0]

    def call(method, **params):
        seq[0] += 1
        ws.send(json.dumps({"id": seq[0], "method": method, "params": params}))
        while True:
            m = json.loads(ws.recv())
            if m.get("id") == seq[0]:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            events.append(m)

    def wait_for(event):
        while True:
            for m in events:
                if m.get("method") == event:
                    events.remove(m)
                    return m
            events.append(json.loads(ws.recv()))

    call("Page.enable")
    call("Emulation.setDeviceMetricsOverride", width=1280, height=2000, deviceScaleFactor=1,
         mobile=False)
    call("Page.navigate", url=url)
    wait_for("Page.loadEventFired")
    value = call("Runtime.evaluate", expression=expression, returnByValue=True)
    if "exceptionDetails" in value:
        raise RuntimeError(f"evaluate: {value['exceptionDetails']}")
    png = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    with open(shot, "wb") as f:
        f.write(base64.b64decode(png["data"]))
    print(json.dumps(value["result"]["value"]))
    ws.close()
finally:
    chromium.terminate()
    try:
        chromium.wait(10)
    except subprocess.TimeoutExpired:
        chromium.kill()
        chromium.wait()
    shutil.rmtree(profile, ignore_errors=True)
