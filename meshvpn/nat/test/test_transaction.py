"""STUN client retransmission (RFC 8489 6.2.1) and the per-socket STUN endpoint, on task.Clock."""

from twisted.internet import task
from twisted.trial import unittest

from meshvpn.nat import stun
from meshvpn.nat.endpoint import StunEndpoint
from meshvpn.nat.transaction import StunClient, StunTimeout, TooManyTransactions


class ClientTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.sent = []
        self.client = StunClient(self.clock, lambda data, addr: self.sent.append((self.clock.seconds(), data, addr)))

    def test_rfcSchedule(self):
        req = stun.StunMessage(stun.BINDING, stun.REQUEST)
        d = self.client.request(req, ("198.18.0.1", 3478))
        failures = []
        d.addErrback(failures.append)
        self.clock.pump([0.25] * 200)
        self.assertEqual([t for t, _, _ in self.sent], [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        self.assertEqual(len(failures), 1)
        failures[0].trap(StunTimeout)
        self.assertEqual(self.client.pendingCount(), 0)

    def test_timeoutMoment(self):
        d = self.client.request(stun.StunMessage(stun.BINDING, stun.REQUEST), ("198.18.0.1", 3478))
        failures = []
        d.addErrback(failures.append)
        self.clock.advance(39.4999)
        self.assertEqual(failures, [])
        self.clock.advance(0.0002)
        self.assertEqual(len(failures), 1)

    def test_responseStopsRetransmission(self):
        req = stun.StunMessage(stun.BINDING, stun.REQUEST)
        d = self.client.request(req, ("198.18.0.1", 3478), rto=0.1, rc=3, rm=4)
        self.clock.advance(0.15)
        self.assertEqual(len(self.sent), 2)
        resp = req.response().addXorAddress(stun.XOR_MAPPED_ADDRESS, ("198.18.5.5", 999))
        self.assertTrue(self.client.responseReceived(stun.StunMessage.decode(resp.encode()), ("198.18.0.1", 3478)))
        result = self.successResultOf(d)
        self.assertEqual(result.message.getXorAddress(), ("198.18.5.5", 999))
        self.assertAlmostEqual(result.rtt, 0.15)
        self.assertEqual(result.attempts, 2)
        self.clock.advance(100)
        self.assertEqual(len(self.sent), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # a duplicate answer is ignored
        self.assertFalse(self.client.responseReceived(stun.StunMessage.decode(resp.encode()), ("198.18.0.1", 3478)))

    def test_cancel(self):
        d = self.client.request(stun.StunMessage(stun.BINDING, stun.REQUEST), ("198.18.0.1", 3478))
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bounded(self):
        client = StunClient(self.clock, lambda *a: None, maxPending=2)
        ds = [client.request(stun.StunMessage(stun.BINDING, stun.REQUEST), ("198.18.0.1", 1)) for _ in range(3)]
        self.failureResultOf(ds[2], TooManyTransactions)
        client.cancelAll()
        for d in ds[:2]:
            self.failureResultOf(d)


class EndpointTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.sent = []
        self.ep = StunEndpoint(self.clock, lambda data, addr: self.sent.append((data, addr)))

    def test_routesRequestsAndResponses(self):
        seen = []
        self.ep.setMethodHandler(stun.BINDING, lambda m, a: seen.append((m.transactionId, a)))
        req = stun.StunMessage(stun.BINDING, stun.REQUEST)
        self.ep.datagramReceived(req.encode(), ("198.18.0.9", 5))
        self.assertEqual(seen, [(req.transactionId, ("198.18.0.9", 5))])
        mine = stun.StunMessage(stun.BINDING, stun.REQUEST)
        d = self.ep.client.request(mine, ("198.18.0.1", 3478))
        self.ep.datagramReceived(mine.response().encode(fingerprint=True), ("198.18.0.1", 3478))
        self.assertEqual(self.successResultOf(d).source, ("198.18.0.1", 3478))

    def test_malformedCounted(self):
        self.ep.datagramReceived(b"\x00\x01junk", ("198.18.0.9", 5))
        self.ep.datagramReceived(stun.StunMessage(stun.ALLOCATE, stun.REQUEST).encode(), ("198.18.0.9", 5))
        self.assertEqual(self.ep.counters["malformed"], 1)
        self.assertEqual(self.ep.counters["no_handler"], 1)

    def test_watcher(self):
        got = []
        req = stun.StunMessage(stun.BINDING, stun.REQUEST)
        self.ep.watchTransaction(req.transactionId, lambda m, a: got.append(a))
        self.ep.datagramReceived(req.encode(), ("198.18.0.9", 5))
        self.assertEqual(got, [("198.18.0.9", 5)])


class InterfaceTests(unittest.TestCase):
    def test_verify(self):
        from zope.interface.verify import verifyObject

        from meshvpn.interfaces import IDatagramHandler, INATProbe, IStunEndpoint
        from meshvpn.nat.classify import NATProbe

        ep = StunEndpoint(task.Clock(), lambda *a: None)
        verifyObject(IStunEndpoint, ep)
        verifyObject(IDatagramHandler, ep)
        verifyObject(INATProbe, NATProbe(task.Clock(), ep, 1))
