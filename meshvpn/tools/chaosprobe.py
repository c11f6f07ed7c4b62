"""Users of a VPN client for the namespace chaos bench: plain HTTP fetches that the client's TUN carries.

Run inside the VPN client's namespace as ``python -m meshvpn.tools.chaosprobe
--web H:P --users N --probe S --timeout T --stop-file F --out FILE``.  Each
user fetches 2 KiB from the made-up internet's web server every C{--probe}
seconds, checked byte for byte, until the stop file exists; the result file
has the load generator's shape (L{meshvpn.tools.benchloadgen}), so the chaos
bench analyses both kinds of users alike.  A VPN user sees no SOCKS reply:
its failures are named by what the socket said (C{refused}, C{reset},
C{unreachable}, C{hung}: no answer before the timeout, C{stalled}: part of
one).
"""

import argparse
import errno
import json
import os
import socket
import threading
import time

from meshvpn.hostport import splitHostPort
from meshvpn.tools.webfixture import body

SIZE = 2048
_ERRNOS = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset", errno.EHOSTUNREACH: "unreachable",
           errno.ENETUNREACH: "unreachable", errno.EPIPE: "reset"}


def fetchOnce(web, timeout, expected):
    """@return: C{(connectS, bytes, error)}; C{error} is C{None} or a short name."""
    start = time.monotonic()
    connected, got = None, b""
    try:
        with socket.create_connection(web, timeout=timeout) as s:
            connected = time.monotonic() - start
            s.sendall(b"GET /bytes/%d HTTP/1.0\r\nHost: chaos\r\n\r\n" % SIZE)
            while True:
                left = timeout - (time.monotonic() - start)
                if left <= 0:
                    raise socket.timeout()
                s.settimeout(left)
                data = s.recv(65536)
                if not data:
                    break
                got += data
    except socket.timeout:
        return connected, 0, "hung" if connected is None or not got else "stalled"
    except OSError as e:
        return connected, 0, _ERRNOS.get(e.errno, f"os-error-{e.errno}")
    _, _, payload = got.partition(b"\r\n\r\n")
    if payload != expected:
        return connected, len(payload), "short body" if len(payload) < len(expected) else "bad bytes"
    return connected, len(payload), None


def _user(user, args, web, fetches, lock, t0):
    expected = body(SIZE)
    time.sleep(0.2 * user)
    first = True
    while not os.path.exists(args.stop_file):
        start = time.time()
        connected, size, error = fetchOnce(web, args.timeout, expected)
        with lock:
            fetches.append([user, start - t0, connected, time.time() - start, size, error, first, False])
        first = False
        time.sleep(args.probe)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--web", required=True)
    p.add_argument("--users", type=int, default=2)
    p.add_argument("--probe", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    web = splitHostPort(args.web)
    t0 = time.time()
    fetches, lock = [], threading.Lock()
    threads = [threading.Thread(target=_user, args=(u, args, web, fetches, lock, t0), daemon=True)
               for u in range(args.users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"users": args.users, "t0_epoch": t0, "fetches": fetches}, f)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
