"""Telling the service manager how the node is doing: the sd_notify datagram protocol.

systemd starts a C{Type=notify} unit with C{$NOTIFY_SOCKET} naming a Unix
datagram socket; the service writes newline-separated C{KEY=VALUE}
assignments to it (C{READY=1}, C{RELOADING=1}, C{STOPPING=1}, C{STATUS=...},
C{WATCHDOG=1}).  The protocol is one C{sendto}, so it is written here rather
than pulled in as a dependency.  Without C{$NOTIFY_SOCKET} (not under
systemd) every call does nothing.
"""

import os
import socket


def notifySocketAddress(environ=None):
    """
    @return: the address to send to (C{str} path, or C{bytes} with a leading
        NUL for an abstract socket), or C{None} when not run by a service manager.
    """
    environ = os.environ if environ is None else environ
    path = environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    if path.startswith("/"):
        return path
    return None  # vsock and other forms are not used for services


def formatMessage(**fields):
    """
    C{formatMessage(READY=1, STATUS="up")} -> C{b"READY=1\\nSTATUS=up"}.
    Newlines in a value would start a new assignment, so they become spaces.
    """
    parts = []
    for key, value in fields.items():
        text = str(value).replace("\n", " ")
        parts.append(f"{key}={text}")
    return "\n".join(parts).encode()


def notify(environ=None, **fields):
    """
    Send one notification.  @return: C{True} if it was sent, C{False} when
    there is no service manager or the send failed (never raises: a node
    does not stop because its supervisor went away).
    """
    address = notifySocketAddress(environ)
    if address is None or not fields:
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.sendto(formatMessage(**fields), address)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def watchdogInterval(environ=None):
    """
    @return: seconds between C{WATCHDOG=1} pings (half of C{$WATCHDOG_USEC},
        as sd_watchdog_enabled advises), or C{None} if no watchdog is set
        for this process.
    """
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    if usec <= 0:
        return None
    return usec / 2e6
