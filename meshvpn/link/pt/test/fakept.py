"""A managed transport that speaks the launch protocol well or badly, chosen by argv[1] (test fixture).

Run by the tests with the pt-spec environment; it checks that environment
the way a real transport would and then behaves as its mode says.
"""

import os
import sys
import time


def out(*lines):
    for line in lines:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def waitStdinClosed():
    # TOR_PT_EXIT_ON_STDIN_CLOSE=1: exit when the parent closes our stdin.
    if os.environ.get("TOR_PT_EXIT_ON_STDIN_CLOSE") == "1":
        sys.stdin.read()
        sys.exit(0)
    time.sleep(3600)


def main(mode):
    env = os.environ
    if env.get("TOR_PT_MANAGED_TRANSPORT_VER") != "1":
        out("VERSION-ERROR no-version")
        return 1
    if not os.path.isdir(env.get("TOR_PT_STATE_LOCATION", "/nonexistent")):
        out("ENV-ERROR no state location")
        return 1
    names = (env.get("TOR_PT_CLIENT_TRANSPORTS") or env.get("TOR_PT_SERVER_TRANSPORTS") or "").split(",")
    if mode == "good":
        out("VERSION 1", *(f"CMETHOD {n} socks5 127.0.0.1:9" for n in names), "CMETHODS DONE")
        out("LOG SEVERITY=notice MESSAGE=\"ready\"")
        waitStdinClosed()
    if mode == "good-then-crash":
        out("VERSION 1", *(f"CMETHOD {n} socks5 127.0.0.1:9" for n in names), "CMETHODS DONE")
        time.sleep(0.3)
        return 3
    if mode == "ignores-stdin":
        out("VERSION 1", *(f"CMETHOD {n} socks5 127.0.0.1:9" for n in names), "CMETHODS DONE")
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
    if mode == "version-error":
        out("VERSION-ERROR no-version")
        return 1
    if mode == "version-2":
        out("VERSION 2")
        waitStdinClosed()
    if mode == "env-error":
        out("ENV-ERROR TOR_PT_ORPORT is missing")
        return 1
    if mode == "method-before-version":
        out("CMETHOD obfs4 socks5 127.0.0.1:9")
        waitStdinClosed()
    if mode == "bad-address":
        out("VERSION 1", "CMETHOD obfs4 socks5 localhost:9")
        waitStdinClosed()
    if mode == "socks4":
        out("VERSION 1", "CMETHOD obfs4 socks4 127.0.0.1:9", "CMETHODS DONE")
        waitStdinClosed()
    if mode == "unasked":
        out("VERSION 1", "CMETHOD meek socks5 127.0.0.1:9", "CMETHODS DONE")
        waitStdinClosed()
    if mode == "method-error":
        out("VERSION 1", *(f"CMETHOD-ERROR {n} no key material" for n in names), "CMETHODS DONE")
        waitStdinClosed()
    if mode == "wrong-done":
        out("VERSION 1", "CMETHOD obfs4 socks5 127.0.0.1:9", "SMETHODS DONE")
        waitStdinClosed()
    if mode == "garbage":
        sys.stdout.buffer.write(b"\xff\xfe not utf-8\n")
        sys.stdout.flush()
        waitStdinClosed()
    if mode == "long-line":
        sys.stdout.write("VERSION 1\n" + "X" * 100000)
        sys.stdout.flush()
        waitStdinClosed()
    if mode == "hang":
        out("VERSION 1")
        waitStdinClosed()
    if mode == "exit-early":
        sys.stderr.write("fatal: cannot open state file\n")
        sys.stderr.flush()
        return 2
    return 9


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]) or 0)
