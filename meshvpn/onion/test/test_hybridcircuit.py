"""
Hybrid (X25519 + ML-KEM-768) circuits end to end over in-memory links: the
handshake each hop gets, what the client reports, downgrades refused, and
the bounds on half-received handshakes.
"""

from twisted.trial import unittest

from meshvpn import hybridkem
from meshvpn.onion import circhandshake as ch
from meshvpn.onion import ntorv3
from meshvpn.onion.cells import Command, DestroyReason, encodeCell, parseCell
from meshvpn.onion.destroy import CircuitDestroyed
from meshvpn.onion.fragments import create2Cells, created2Cells
from meshvpn.onion.test.test_circuit import SECRET, Net


def requireKEM(case):
    if not hybridkem.available():
        raise unittest.SkipTest("ML-KEM-768 is not available here")


class HybridCircuitTests(unittest.TestCase):
    def setUp(self):
        requireKEM(self)

    def test_everyHopHybrid(self):
        n = Net(self)
        circ, d = n.circuit()
        self.successResultOf(d)
        self.assertEqual(circ.hopKinds, [ch.HYBRID] * 3)
        self.assertEqual(circ.status()["post_quantum_hops"], [True, True, True])
        self.assertEqual(circ.earlySent, 2)  # FRAGMENTs spend no RELAY_EARLY
        for relay in (n.guard, n.middle, n.exit):
            self.assertEqual(relay.switch.counters["created_hybrid"], 1)
        got = []
        circ.setPacketReceiver(got.extend)
        circ.sendPackets([SECRET])
        n.net.pump()
        self.assertEqual((n.edge.packets, got), ([SECRET], [SECRET[::-1]]))

    def test_mixedPath(self):
        """A middle whose descriptor lists no handshakes (an older relay) gets ntor; the others hybrid."""
        n = Net(self)
        path = [n.guard.hopSpec(), n.middle.hopSpec(handshakes=()), n.exit.hopSpec()]
        circ, d = n.circuit(path)
        self.successResultOf(d)
        self.assertEqual(circ.hopKinds, [ch.HYBRID, ch.NTOR, ch.HYBRID])
        self.assertEqual(circ.postQuantumHops, [True, False, True])

    def test_ntor3WhenKEMMissingHere(self):
        self.addCleanup(hybridkem.setAvailableForTests, None)
        n = Net(self)
        path = [n.guard.hopSpec(), n.middle.hopSpec(), n.exit.hopSpec()]
        hybridkem.setAvailableForTests(False)
        circ, d = n.circuit(path)
        self.successResultOf(d)
        self.assertEqual(circ.hopKinds, [ch.NTOR3] * 3)


class DowngradeTests(unittest.TestCase):
    """A relay that advertises the hybrid handshake but answers classically is refused."""

    def setUp(self):
        requireKEM(self)

    def _classicAnswer(self, relay):
        """Make C{relay} answer the hybrid CREATE2 with a valid ntor v3 reply that has no ML-KEM ciphertext."""
        switch = relay.switch

        def answer(channel, circId, create):
            state, _ = ntorv3.serverReceive(ch.TWEAKS[ch.HYBRID], create.hdata, switch.nodeId,
                                            switch.keyRing.findKey, ch.VERIFICATION)
            sm = ch.encodeExtensions([(ch.EXT_CRYPTO_CHOSEN, b"\x01")])
            _, _, reply = ntorv3.serverRespond(state, sm, ch.KEY_MATERIAL_LEN)
            for cell in created2Cells(circId, reply):
                channel.send(cell)

        switch._answer = answer

    def test_guardDowngrade(self):
        n = Net(self)
        self._classicAnswer(n.guard)
        circ, d = n.circuit()
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertEqual(f.value.reason, DestroyReason.PROTOCOL)
        self.assertIn("downgrade refused", str(f.value))
        self.assertTrue(circ.closed)

    def test_exitDowngrade(self):
        n = Net(self)
        self._classicAnswer(n.exit)
        circ, d = n.circuit()
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertIn("downgrade refused", str(f.value))

    def test_strippedDescriptorIsNotTheRelaysWord(self):
        """
        The client trusts the signed descriptor, not the relay's answer: a
        hop listed as hybrid never gets a classic handshake from the client.
        """
        n = Net(self)
        circ, d = n.circuit()
        self.successResultOf(d)
        self.assertNotIn(ch.NTOR, circ.hopKinds)


class HalfReceivedTests(unittest.TestCase):
    """A peer that starts long CREATE2s and never finishes them costs a bounded, short-lived amount."""

    def setUp(self):
        requireKEM(self)
        self.n = Net(self)
        self.link = self.n.client.linkTo(self.n.guard.nodeId)
        self.got = []
        self.link.setCellReceiver(lambda cells: self.got.extend(parseCell(c) for c in cells))

    def send(self, cells):
        self.link.sendCells(cells)
        self.n.net.pump()

    def destroys(self):
        return [(c.circId, c.payload[0]) for c in self.got if c.command == Command.DESTROY]

    def test_perLinkBound(self):
        limit = self.n.guard.switch.limits.halfOpenPerLink
        for i in range(limit + 3):
            self.send(create2Cells(0x80000001 + i, ch.HTYPES[ch.HYBRID], bytes(1319))[:1])
        refused = [reason for _, reason in self.destroys()]
        self.assertEqual(refused, [DestroyReason.RESOURCELIMIT] * 3)
        self.assertEqual(self.n.guard.switch.halfOpen.count, limit)

    def test_expireInTime(self):
        self.send(create2Cells(0x80000001, ch.HTYPES[ch.HYBRID], bytes(1319))[:2])
        self.n.clock.advance(self.n.guard.switch.limits.halfOpenMaxAge + 0.1)
        self.n.net.pump()
        self.assertEqual(self.destroys(), [(0x80000001, DestroyReason.TIMEOUT)])
        self.assertEqual(self.n.guard.switch.halfOpen.count, 0)
        self.assertEqual(self.n.guard.switch.counters["handshakes_expired"], 1)

    def test_destroyForgets(self):
        self.send(create2Cells(0x80000001, ch.HTYPES[ch.HYBRID], bytes(1319))[:1])
        self.send([encodeCell(0x80000001, Command.DESTROY, bytes([DestroyReason.FINISHED]))])
        self.assertEqual(self.n.guard.switch.halfOpen.count, 0)

    def test_linkCloseForgets(self):
        self.send(create2Cells(0x80000001, ch.HTYPES[ch.HYBRID], bytes(1319))[:1])
        self.link.close()
        self.n.net.pump()
        self.assertEqual(self.n.guard.switch.halfOpen.count, 0)

    def test_garbageBodyIsAProtocolError(self):
        """A whole body that is not a valid handshake: DESTROY PROTOCOL for that circuit only."""
        self.send(create2Cells(0x80000001, ch.HTYPES[ch.HYBRID], bytes(1319)))
        self.assertEqual(self.destroys(), [(0x80000001, DestroyReason.PROTOCOL)])
        self.assertEqual(self.n.guard.switch.halfOpen.count, 0)
