"""
An end's sealing in C (meshvpn/onion/_cgodirection.c: originate, originateRun,
originateData) leaves no plaintext on the C stack, on success and when it
fails after the plaintext was copied there.

The attack this stands for is anything that later reads stale stack memory
(a core dump, a swapped page, a bug in other native code): the test seals a
random body, then reads this process's own stack through /proc/self/mem and
looks for any 16-byte piece of that body.  Against the functions before they
wiped their buffers, originateRun and originate left pieces behind.
"""

import os
import resource

from twisted.trial import unittest

from meshvpn.onion import cgo
from meshvpn.onion.cells import CGO_BODY_AT, CGO_RELAY_DATA_LEN

try:
    from meshvpn.onion import _cgodirection as C
except ImportError:
    C = None

_NOT_BUILT = "meshvpn.onion._cgodirection was not built (no C compiler or OpenSSL headers)"
_PIECE = 16


def _stack():
    """The main thread's stack as (low, high), or None where /proc does not show it."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("[stack]"):
                    low, high = line.split()[0].split("-")
                    return int(low, 16), int(high, 16)
    except OSError:
        return None
    return None


class StackScanner:
    """Reads this process's stack and counts the pieces of a secret found in it."""

    def __init__(self, fd, low, high):
        self.fd, self.low, self.high = fd, low, high

    def piecesOf(self, secret):
        mem = os.pread(self.fd, self.high - self.low, self.low)
        return sum(secret[i:i + _PIECE] in mem for i in range(0, len(secret) - _PIECE + 1, _PIECE))


def _bodies(secret):
    """The three ways an end seals the same secret: a 493-byte body, a relay payload, a DATA chunk."""
    body = secret[:cgo.BODY_LEN]
    payload = bytes(CGO_BODY_AT) + b"\x02\x00\x01" + len(secret[:CGO_RELAY_DATA_LEN]).to_bytes(2, "big") \
        + secret[:CGO_RELAY_DATA_LEN]
    payload += bytes(cgo.PAYLOAD_LEN - len(payload))
    return body, payload, secret[:CGO_RELAY_DATA_LEN]


class WipeTests(unittest.TestCase):
    def setUp(self):
        if C is None:
            raise unittest.SkipTest(_NOT_BUILT)
        stack = _stack()
        if stack is None:
            raise unittest.SkipTest("no /proc/self/maps [stack] to read")
        try:
            fd = os.open("/proc/self/mem", os.O_RDONLY)
        except OSError as e:
            raise unittest.SkipTest(f"/proc/self/mem is not readable: {e}")
        self.addCleanup(os.close, fd)
        self.scanner = StackScanner(fd, *stack)
        # The first read of a fresh process's stack can show bytes that no seal put there.
        self.scanner.piecesOf(os.urandom(cgo.BODY_LEN))

    def assertNothingLeft(self, seal):
        for _ in range(3):
            secret = os.urandom(cgo.BODY_LEN)
            seal(C.Direction(os.urandom(cgo.STATE_SEED_LEN), False), secret)
            self.assertEqual(self.scanner.piecesOf(secret), 0)

    def test_originate(self):
        self.assertNothingLeft(lambda d, s: d.originate(b"\x03", _bodies(s)[0]))

    def test_originateRun(self):
        self.assertNothingLeft(lambda d, s: d.originateRun(b"\x03", [_bodies(s)[0]] * 2, b"h"))

    def test_originateRunAt(self):
        self.assertNothingLeft(lambda d, s: d.originateRun(b"\x03", [_bodies(s)[1]], b"h", CGO_BODY_AT,
                                                           CGO_RELAY_DATA_LEN))

    def test_originateData(self):
        self.assertNothingLeft(lambda d, s: d.originateData(b"\x03", 2, 1, [_bodies(s)[2]] * 2, CGO_RELAY_DATA_LEN,
                                                            b"h"))

    def _failingAfterTheCopy(self, seal):
        """
        The seal fails after its plaintext reached the stack: the cell's allocation (head + cell)
        is refused under an address-space limit, so the error return is taken with the body copied.
        """
        head = bytes(256 << 20)  # calloc'd: address space, not memory
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + (32 << 20), hard))
        try:
            seal(head)
        except MemoryError:
            refused = True
        else:
            refused = False
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        self.assertTrue(refused)

    def test_originateRunFailing(self):
        def seal(d, s):
            bodies = [_bodies(s)[0]]
            self._failingAfterTheCopy(lambda head: d.originateRun(b"\x03", bodies, head))
        self.assertNothingLeft(seal)

    def test_originateDataFailing(self):
        def seal(d, s):
            chunks = [_bodies(s)[2]]
            self._failingAfterTheCopy(lambda head: d.originateData(b"\x03", 2, 1, chunks, CGO_RELAY_DATA_LEN, head))
        self.assertNothingLeft(seal)

    def test_failingLeavesTheKeys(self):
        """A seal refused before its first cell leaves the keys: a retry gives the Python reference's cells."""
        seed, body = os.urandom(cgo.STATE_SEED_LEN), os.urandom(cgo.BODY_LEN)
        d, bodies = C.Direction(seed, False), [body]
        self._failingAfterTheCopy(lambda head: d.originateRun(b"\x03", bodies, head))
        self.assertEqual(d.originateRun(b"\x03", [body], b"h"), cgo.PyDirection(seed, False).originateRun(b"\x03", [body], b"h"))
