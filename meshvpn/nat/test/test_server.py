"""The STUN server: Binding answers, RFC 5780 socket choice, amplification bound, rate limit."""


from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial import unittest

from meshvpn.nat import stun
from meshvpn.nat.server import AMPLIFICATION, BURST, MAX_SOURCES, RATE, StunServer, checkAlternate
from meshvpn.ratelimit import BucketTable

A1, A2 = "198.18.0.1", "198.18.0.2"
P1, P2 = 3478, 3479
ADDRS = {(0, 0): (A1, P1), (0, 1): (A1, P2), (1, 0): (A2, P1), (1, 1): (A2, P2)}
CLIENT = ("198.18.0.77", 40000)


class ServerTests(unittest.TestCase):
    def makeServer(self, rfc5780=True):
        self.clock = task.Clock()
        self.sent = []
        sockets = {}
        for index, addr in ADDRS.items():
            if rfc5780 or index == (0, 0):
                sockets[index] = (lambda data, dest, index=index: self.sent.append((index, data, dest)), addr)
        return StunServer(self.clock, sockets)

    def ask(self, server, req, arrivedOn=(0, 0), source=CLIENT, **kw):
        data = req.encode(**kw)
        server.requestReceived(stun.StunMessage.decode(data), source, arrivedOn)
        index, out, dest = self.sent.pop()
        return index, stun.StunMessage.decode(out), dest, len(data), len(out)

    def test_plainBinding(self):
        server = self.makeServer(rfc5780=False)
        req = stun.StunMessage(stun.BINDING, stun.REQUEST).add(stun.SOFTWARE, b"a client here")
        index, resp, dest, _, _ = self.ask(server, req, fingerprint=True)
        self.assertEqual((index, dest, resp.cls, resp.transactionId), ((0, 0), CLIENT, stun.SUCCESS, req.transactionId))
        self.assertEqual(resp.getXorAddress(), CLIENT)
        self.assertIsNone(resp.get(stun.OTHER_ADDRESS))
        self.assertTrue(resp.hasFingerprint)

    def test_ipv6RequestToAnIPv4AlternatePairIsPlain(self):
        """A dual-stack server's RFC 5780 addresses are IPv4: an IPv6 client gets its mapped address only."""
        server = self.makeServer(rfc5780=True)
        client6 = ("2001:2::77", 40000)
        index, resp, dest, _, _ = self.ask(server, stun.StunMessage(stun.BINDING, stun.REQUEST), source=client6)
        self.assertEqual((index, dest, resp.cls), ((0, 0), client6, stun.SUCCESS))
        self.assertEqual(resp.getXorAddress(), client6)
        self.assertFalse(resp.has(stun.OTHER_ADDRESS))
        req = stun.StunMessage(stun.BINDING, stun.REQUEST).add(stun.CHANGE_REQUEST, stun.encodeChangeRequest(True, True))
        _, resp, dest, _, _ = self.ask(server, req, source=client6)
        self.assertEqual((resp.cls, dest), (stun.ERROR, client6))

    def test_changeRequestWithoutAlternateIs420(self):
        server = self.makeServer(rfc5780=False)
        req = stun.StunMessage(stun.BINDING, stun.REQUEST).add(stun.CHANGE_REQUEST, stun.encodeChangeRequest(True, True))
        _, resp, _, _, _ = self.ask(server, req)
        self.assertEqual(resp.errorCode()[0], 420)
        self.assertEqual(stun.decodeUnknownAttributes(resp.get(stun.UNKNOWN_ATTRIBUTES)), [stun.CHANGE_REQUEST])

    def test_unknownComprehensionRequired(self):
        server = self.makeServer()
        req = stun.StunMessage(stun.BINDING, stun.REQUEST).add(0x7FFF, b"????")
        _, resp, _, _, _ = self.ask(server, req)
        self.assertEqual(resp.errorCode()[0], 420)

    def test_rfc5780Sockets(self):
        server = self.makeServer()
        padded = stun.StunMessage(stun.BINDING, stun.REQUEST).add(stun.SOFTWARE, b"x" * 40)
        index, resp, _, _, _ = self.ask(server, padded)
        self.assertEqual(index, (0, 0))
        self.assertEqual(resp.getAddress(stun.OTHER_ADDRESS), (A2, P2))
        self.assertEqual(resp.getAddress(stun.RESPONSE_ORIGIN), (A1, P1))
        for (changeIP, changePort), arrived, expected in [
            ((True, True), (0, 0), (1, 1)),
            ((False, True), (0, 0), (0, 1)),
            ((True, False), (0, 0), (1, 0)),
            ((True, True), (1, 0), (0, 1)),
            ((False, False), (1, 1), (1, 1)),
        ]:
            req = stun.StunMessage(stun.BINDING, stun.REQUEST).add(stun.SOFTWARE, b"x" * 40)
            req.add(stun.CHANGE_REQUEST, stun.encodeChangeRequest(changeIP, changePort))
            index, resp, _, _, _ = self.ask(server, req, arrivedOn=arrived)
            self.assertEqual(index, expected)
            self.assertEqual(resp.getAddress(stun.RESPONSE_ORIGIN), ADDRS[expected])
            self.assertEqual(resp.getAddress(stun.OTHER_ADDRESS), ADDRS[(1 - arrived[0], 1 - arrived[1])])

    def test_responsePort(self):
        server = self.makeServer()
        req = stun.StunMessage(stun.BINDING, stun.REQUEST).add(stun.RESPONSE_PORT, stun.encodeResponsePort(5555))
        _, _, dest, _, _ = self.ask(server, req)
        self.assertEqual(dest, (CLIENT[0], 5555))

    def test_amplificationBound(self):
        server = self.makeServer()
        server.software = b"a rather long server name that would not fit"
        for source in (CLIENT, ("2001:db8::77", 40000)):
            req = stun.StunMessage(stun.BINDING, stun.REQUEST)
            _, resp, _, reqLen, respLen = self.ask(server, req, source=source)
            self.assertEqual(reqLen, 20)
            self.assertLessEqual(respLen, AMPLIFICATION * reqLen)
            self.assertEqual(resp.getXorAddress(), source)
        self.assertGreater(server.counters["trimmed"], 0)

    @settings(max_examples=100, deadline=None)
    @given(
        st.lists(st.sampled_from([stun.SOFTWARE, stun.PADDING, stun.PRIORITY, 0x8777]), max_size=4),
        st.integers(0, 60),
        st.booleans(),
        st.booleans(),
    )
    def test_amplificationBoundAlways(self, attrs, size, fp, change):
        server = self.makeServer()
        server.limiter = BucketTable(self.clock, RATE, 1e9, MAX_SOURCES)
        req = stun.StunMessage(stun.BINDING, stun.REQUEST)
        for t in attrs:
            req.add(t, b"\x00" * size)
        if change:
            req.add(stun.CHANGE_REQUEST, stun.encodeChangeRequest(True, False))
        _, _, _, reqLen, respLen = self.ask(server, req, source=("2001:db8::1", 1), fingerprint=fp)
        self.assertLessEqual(respLen, AMPLIFICATION * reqLen)

    def test_rateLimit(self):
        server = self.makeServer()
        req = stun.StunMessage(stun.BINDING, stun.REQUEST).encode()
        for _ in range(int(BURST) + 10):
            server.requestReceived(stun.StunMessage.decode(req), CLIENT)
        self.assertEqual(len(self.sent), int(BURST))
        self.assertEqual(server.counters["rate_limited"], 10)
        # another source is not affected
        server.requestReceived(stun.StunMessage.decode(req), ("198.18.0.78", 1))
        self.assertEqual(len(self.sent), int(BURST) + 1)
        self.clock.advance(1.0)
        server.requestReceived(stun.StunMessage.decode(req), CLIENT)
        self.assertEqual(len(self.sent), int(BURST) + 2)

    def test_rateLimiterTableBounded(self):
        limiter = BucketTable(task.Clock(), RATE, BURST, maxKeys=100)
        for i in range(1000):
            limiter.tryConsume(f"198.18.{i // 256}.{i % 256}")
        self.assertEqual(len(limiter), 100)

    def test_ignoresIndicationsAndOtherMethods(self):
        server = self.makeServer()
        server.requestReceived(stun.StunMessage.decode(stun.StunMessage(stun.BINDING, stun.INDICATION).encode()), CLIENT)
        server.requestReceived(stun.StunMessage.decode(stun.StunMessage(stun.ALLOCATE, stun.REQUEST).encode()), CLIENT)
        self.assertEqual(self.sent, [])

    def test_badAttributeValueGets400(self):
        server = self.makeServer()
        req = stun.StunMessage(stun.BINDING, stun.REQUEST).add(stun.CHANGE_REQUEST, b"\x00\x00")
        _, resp, _, _, _ = self.ask(server, req)
        self.assertEqual(resp.errorCode()[0], 400)

    def test_checkAlternate(self):
        checkAlternate(("198.18.0.1", 3478), None)
        checkAlternate(("198.18.0.1", 3478), ("198.18.0.2", 3479))
        for udp, alt in [
            (("0.0.0.0", 3478), ("198.18.0.2", 3479)),
            (("198.18.0.1", 3478), ("198.18.0.1", 3479)),
            (("198.18.0.1", 3478), ("198.18.0.2", 3478)),
            (("198.18.0.1", 3478), ("2001:db8::1", 3479)),
        ]:
            self.assertRaises(ValueError, checkAlternate, udp, alt)


class RelayRoleTests(unittest.TestCase):
    def test_settings(self):
        from meshvpn.roles.relay import Options

        o = Options()
        o.parseOptions(["--data-dir", self.mktemp(), "--udp", "127.0.0.1:0", "--stun-alternate", "127.0.0.2:3479"])
        self.assertEqual(o.settings["stun_alternate"], ("127.0.0.2", 3479))
        self.assertTrue(o.settings["stun_server"])




class FuzzServerTests(unittest.TestCase):
    """Whatever arrives on the socket, the endpoint and server neither raise nor exceed the bound."""

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=24)), max_size=6),
        st.binary(max_size=8),
        st.booleans(),
    )
    def test_hostileRequests(self, attrs, junk, corruptLength):
        from meshvpn.nat.endpoint import StunEndpoint

        clock = task.Clock()
        sent = []
        server = StunServer(clock, {i: ((lambda d, a, i=i: sent.append(d)), ADDRS[i]) for i in ADDRS})
        ep = StunEndpoint(clock, lambda d, a: sent.append(d))
        ep.setMethodHandler(stun.BINDING, server.requestReceived)
        req = stun.StunMessage(stun.BINDING, stun.REQUEST)
        for t, v in attrs:
            if t not in (stun.MESSAGE_INTEGRITY, stun.MESSAGE_INTEGRITY_SHA256, stun.FINGERPRINT):
                req.add(t, v)
        data = req.encode() + (junk if corruptLength else b"")
        ep.datagramReceived(data, CLIENT)
        for out in sent:
            self.assertLessEqual(len(out), AMPLIFICATION * len(data))


class OverIPv6Tests(unittest.TestCase):
    """Real sockets on ::1: a relay's STUN server answers over IPv6, and netcheck reads an IPv6 mapped address."""

    timeout = 30

    def test_netcheckOverIPv6(self):
        from twisted.internet import defer, reactor

        from meshvpn.nat.classify import netcheck
        from meshvpn.nat.endpoint import StunEndpoint
        from meshvpn.nat.server import StunServerService
        from meshvpn.ports import UDPPortService
        from meshvpn.udpmux import DatagramMultiplexer

        mux = DatagramMultiplexer()
        udp = UDPPortService(reactor, mux, "::1", 0)
        udp.startService()
        self.addCleanup(udp.stopService)
        service = StunServerService(reactor, mux, StunEndpoint.onSocket(reactor, mux))
        service.startService()
        self.addCleanup(service.stopService)
        server = ("::1", mux.getHost().port)
        report = defer.Deferred.fromCoroutine(netcheck(reactor, [server], bind=("::1", 0), timing=(0.1, 3, 3)))

        def check(report):
            self.assertTrue(report["mapped_address"].startswith("[::1]:"), report)
            self.assertEqual(report["type"], "no-nat", report)

        return report.addCallback(check)
