"""Enter a named network namespace for a moment (tests and the tun benchmark).

A TUN device is created in the namespace of the thread that opens it, and a
netlink socket talks to the namespace it was opened in; both keep working
after the thread switches back.  So the harness creates the device and its
IPRoute inside the namespace, returns, and then runs the reactor as usual.
"""

import contextlib
import ctypes
import os

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@contextlib.contextmanager
def netnsEntered(name):
    """Run the body inside the network namespace C{name} (as made by C{ip netns add})."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
