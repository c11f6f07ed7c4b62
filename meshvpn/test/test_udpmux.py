"""The one-socket demultiplexer: routes by first byte, drops and counts what nobody claimed."""

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from meshvpn.interfaces import IDatagramHandler, IDatagramMultiplexer
from meshvpn.udpmux import DHT_BYTES, STUN_BYTES, DatagramMultiplexer


@implementer(IDatagramHandler)
class Recorder:
    def __init__(self, fail=False):
        self.got = []
        self.fail = fail

    def datagramReceived(self, data, addr):
        if self.fail:
            raise ValueError("bad datagram")
        self.got.append((data, addr))


class MultiplexerTests(unittest.TestCase):
    def setUp(self):
        self.mux = DatagramMultiplexer()
        self.dht, self.stun = Recorder(), Recorder()
        self.mux.register("dht", DHT_BYTES, self.dht)
        self.mux.register("stun", STUN_BYTES, self.stun, accept=lambda d: d[4:8] == b"\x21\x12\xa4\x42")

    def test_interface(self):
        verifyObject(IDatagramMultiplexer, self.mux)

    def test_routesByFirstByte(self):
        addr = ("127.0.0.1", 5)
        self.mux.datagramReceived(b"\x81hello", addr)
        self.mux.datagramReceived(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12, addr)
        self.assertEqual(self.dht.got, [(b"\x81hello", addr)])
        self.assertEqual(len(self.stun.got), 1)
        self.assertEqual(self.mux.counters(), {"dht": 1, "stun": 1})

    def test_dropsUnknownEmptyAndRefused(self):
        for data in (b"", b"\xffx", b"\x50abc", b"\x00\x01\x00\x00nocookie"):
            self.mux.datagramReceived(data, ("127.0.0.1", 5))
        self.assertEqual(self.dht.got + self.stun.got, [])
        self.assertEqual(self.mux.counters(), {"dropped_unknown": 4})

    def test_handlerErrorIsContained(self):
        self.mux.unregister("dht")
        self.mux.register("dht", DHT_BYTES, Recorder(fail=True))
        for _ in range(3):
            self.mux.datagramReceived(b"\x80boom", ("127.0.0.1", 5))
        self.assertEqual(self.mux.counters()["handler_errors"], 3)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)  # logged once, then only counted

    def test_registerConflicts(self):
        self.assertRaises(ValueError, self.mux.register, "other", [0x85], Recorder())
        self.assertRaises(ValueError, self.mux.register, "dht", [0xF0], Recorder())
        self.assertRaises(ValueError, self.mux.register, "bad", [256], Recorder())
        self.mux.unregister("dht")
        self.mux.register("other", [0x85], Recorder())
        self.assertRaises(KeyError, self.mux.unregister, "dht")

    def test_realSocket(self):
        """Over a real loopback socket, datagrams reach their handler."""
        port = reactor.listenUDP(0, self.mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sender = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(sender.stopListening)
        from twisted.internet import defer, task

        sender.write(b"\x8fping", ("127.0.0.1", port.getHost().port))
        sender.write(b"\xeejunk", ("127.0.0.1", port.getHost().port))

        def check():
            if len(self.dht.got) < 1 or self.mux.counters().get("dropped_unknown", 0) < 1:
                return task.deferLater(reactor, 0.01, check)
            self.assertEqual(self.dht.got[0][0], b"\x8fping")

        return defer.maybeDeferred(check)


class _FakeUDP:
    def __init__(self, host):
        from twisted.internet.address import IPv4Address, IPv6Address

        self.host = (IPv6Address if ":" in host else IPv4Address)("UDP", host, 9000)
        self.sent = []

    def getHost(self):
        return self.host

    def write(self, data, addr):
        self.sent.append((data, addr))


class DualStackTests(unittest.TestCase):
    """A dual-stack node: two sockets, one table; each datagram leaves through its destination's family."""

    def setUp(self):
        self.mux = DatagramMultiplexer()
        self.dht = Recorder()
        self.mux.register("dht", DHT_BYTES, self.dht)
        self.v4, self.v6 = _FakeUDP("198.18.0.1"), _FakeUDP("2001:2::1")
        self.mux.makeConnection(self.v4)
        self.mux.secondSocket().makeConnection(self.v6)

    def test_sendsByFamily(self):
        self.mux.sendDatagram(b"\x80a", ("198.18.0.2", 1))
        self.mux.sendDatagram(b"\x80b", ("2001:2::2", 1))
        self.assertEqual(self.v4.sent, [(b"\x80a", ("198.18.0.2", 1))])
        self.assertEqual(self.v6.sent, [(b"\x80b", ("2001:2::2", 1))])

    def test_receivesFromBoth(self):
        self.mux.secondSocket().datagramReceived(b"\x81x", ("2001:2::2", 1))
        self.mux.datagramReceived(b"\x81y", ("198.18.0.2", 1))
        self.assertEqual(self.dht.got, [(b"\x81x", ("2001:2::2", 1)), (b"\x81y", ("198.18.0.2", 1))])

    def test_noSocketOfThatFamilyCounted(self):
        only6 = DatagramMultiplexer()
        only6.makeConnection(_FakeUDP("2001:2::1"))
        only6.sendDatagram(b"\x80a", ("198.18.0.2", 1))
        self.assertEqual(only6.counters(), {"no_route": 1})
        self.assertEqual(only6.transport.sent, [])


class _RefusingSocket:
    """A socket whose kernel refuses UDP segmentation offload (EIO, as a device without checksum offload does)."""

    def __init__(self):
        self.calls = 0

    def sendmsg(self, buffers, ancillary, flags, addr):
        import errno

        self.calls += 1
        raise OSError(errno.EIO, "Input/output error")


class BurstTests(unittest.TestCase):
    """L{DatagramMultiplexer.sendDatagrams}: a burst to one peer in few system calls, the same datagrams on the wire."""

    def setUp(self):
        self.mux = DatagramMultiplexer()

    def burst(self):
        # Runs the offload may join (equal sizes, the last one shorter) and breaks where it may not.
        sizes = [1400] * 70 + [300, 1400, 1400, 20, 900, 1000]
        return [bytes([0x90 + i % 13]) + i.to_bytes(2, "big") + b"x" * (n - 3) for i, n in enumerate(sizes)]

    def test_realSocketSameDatagramsFewerCalls(self):
        """Over loopback the receiver gets every datagram, unchanged and in order, from fewer sendmsg calls."""
        import socket

        port = reactor.listenUDP(0, self.mux, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(receiver.close)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(10)
        burst = self.burst()
        self.mux.sendDatagrams(burst, receiver.getsockname())
        got = [receiver.recv(65535) for _ in burst]
        self.assertEqual(got, burst)
        self.assertEqual(self.mux.counters().get("send_errors", 0), 0)
        # 1400 x 64 | 1400 x 6 + 300 | 1400 x 2 + 20 | 900 | 1000: 3 offloaded sends, 2 single ones.
        self.assertEqual(self.mux.counters()["offload_sends"], 3)

    def test_refusedOffloadFallsBackForGood(self):
        """A kernel that refuses offload costs one try: the datagrams go one by one, then always."""
        transport = _FakeUDP("198.18.0.1")
        transport.socket = _RefusingSocket()
        self.mux.transport = transport
        burst = self.burst()
        self.mux.sendDatagrams(burst, ("198.18.0.2", 1))
        self.assertEqual([d for d, _ in transport.sent], burst)
        self.mux.sendDatagrams(burst[:10], ("198.18.0.2", 1))
        self.assertEqual(transport.socket.calls, 1)
        self.assertEqual(len(transport.sent), len(burst) + 10)
        self.flushLoggedErrors()

    def test_gateHoldsTheBurst(self):
        """With an egress gate that has not let the peer out, the burst waits like single datagrams do."""
        from twisted.internet import defer

        class Gate:
            def __init__(self):
                self.asked = defer.Deferred()

            def passes(self, protocol, addr):
                return False

            def allow(self, what):
                return self.asked

        transport = _FakeUDP("198.18.0.1")
        transport.socket = _RefusingSocket()
        self.mux.transport = transport
        gate = Gate()
        self.mux.setEgressGate(gate)
        burst = self.burst()[:5]
        self.mux.sendDatagrams(burst, ("198.18.0.2", 1))
        self.assertEqual(transport.sent, [])
        gate.asked.callback(None)
        self.assertEqual([d for d, _ in transport.sent], burst)
