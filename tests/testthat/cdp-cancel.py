"""Clicks a job's cancel button on the dashboard in headless Chromium, driven
over the DevTools protocol on a pipe (--remote-debugging-pipe: fds 3 and 4,
NUL-terminated JSON), and answers the confirmation: first no, then yes.

usage: cdp-cancel.py CHROMIUM PROFILE_DIR DASHBOARD_URL STATUS_URL JOB_ID
Prints one line per step; exits 1 when a step does not happen in time.
"""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

chromium, profile, url, status_url, job = sys.argv[1:6]
# The browser reads commands from its fd 3 and writes answers to its fd 4.
to_browser_r, to_browser_w = os.pipe()
from_browser_r, from_browser_w = os.pipe()


def child_fds():
    # Through fds above 9 first: either pipe end may itself be 3 or 4.
    r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
    w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
    os.dup2(r, 3)
    os.dup2(w, 4)


browser = subprocess.Popen(
    [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
     "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--remote-debugging-pipe",
     "--user-data-dir=" + profile, "about:blank"],
    # subprocess closes every other fd after child_fds() ran: keep 3 and 4.
    pass_fds=(3, 4), preexec_fn=child_fds, start_new_session=True,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.close(to_browser_r)
os.close(from_browser_w)
out = os.fdopen(to_browser_w, "wb")
inp = os.fdopen(from_browser_r, "rb")
buf = b""
next_id = 0
events = []


def send(method, params=None, session=None):
    global next_id
    next_id += 1
    msg = {"id": next_id, "method": method, "params": params or {}}
    if session:
        msg["sessionId"] = session
    out.write(json.dumps(msg).encode() + b"\0")
    out.flush()
    return next_id


def read_message():
    global buf
    while b"\0" not in buf:
        chunk = os.read(inp.fileno(), 65536)
        if not chunk:
            raise SystemExit("chromium closed the pipe")
        buf += chunk
    raw, buf = buf.split(b"\0", 1)
    return json.loads(raw)


def wait_reply(i):
    while True:
        m = read_message()
        if m.get("id") == i:
            if "error" in m:
                raise SystemExit("DevTools error: %s" % m["error"])
            return m.get("result", {})
        events.append(m)


def call(method, params=None, session=None):
    return wait_reply(send(method, params, session))


def evaluate(session, expr):
    r = call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session)
    return r.get("result", {}).get("value")


def job_status():
    with urllib.request.urlopen(status_url, timeout=30) as r:
        return json.load(r)["status"]


def until(what, f, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(0.2)
    print("timed out: " + what)
    sys.exit(1)


def click_and_answer(session, accept):
    """Clicks the job's button; answers the dialog it opens; returns its text."""
    button = 'document.querySelector(\'button.cancel[data-job="%s"]\')' % job
    until("the cancel button", lambda: evaluate(session, button + " !== null"))
    i = send("Runtime.evaluate", {"expression": button + ".click()"}, session)
    message = None
    while True:
        m = read_message()
        if m.get("method") == "Page.javascriptDialogOpening" and m.get("sessionId") == session:
            message = m["params"]["message"]
            send("Page.handleJavaScriptDialog", {"accept": accept}, session)
        elif m.get("id") == i:
            return message


try:
    target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    call("Page.enable", {}, session)
    call("Runtime.enable", {}, session)
    call("Page.navigate", {"url": url}, session)
    message = click_and_answer(session, False)
    print("dialog: %s" % message)
    time.sleep(2.5)  # a refresh later, nothing was sent
    print("after no: %s" % job_status())
    message = click_and_answer(session, True)
    print("dialog: %s" % message)
    until("the job to be cancelled", lambda: job_status() == "cancelled")
    print("after yes: %s" % job_status())
    until("the page to drop the job", lambda: evaluate(
        session, 'document.querySelector(\'#running tr[data-job="%s"]\') === null' % job))
    print("row gone")
finally:
    # The browser and its helper processes share its session's process group.
    os.killpg(browser.pid, signal.SIGKILL)
    browser.wait()
