"""Mesh offers from strangers (issue 12, item 6), in memory on task.Clock.

Anyone registered with the same NAT relay can send a signalling payload to
any node id.  Before, an OFFER from a stranger made the victim answer with
its LAN and public addresses and probe 17 addresses the stranger chose for
about 3 s, and a RELAYED after it made the victim send link handshakes to
any address for 10 s.  A connector now takes signals only from the peers it
was configured with.
"""

from twisted.trial import unittest

from meshvpn.nat import signal_wire as sw
from meshvpn.nat.test.test_punch import World
from meshvpn.nat.test.test_turn import Collector

RELAY, TURN = ("198.18.0.5", 7000), ("198.18.0.5", 3478)
# 16 candidates plus the observed address: 17 targets, as in the report
TARGETS = [(f"198.18.77.{i}", 80) for i in range(1, 17)]


class StrangerTests(unittest.TestCase):
    def setUp(self):
        self.world = World()
        a, b = self.world.peers
        self.mallory = self.world._peer(("198.18.66.6", 6666), RELAY, TURN)
        for p in (a, b, self.mallory):
            d = p.sig.start()
            self.world.pump(0.1)
            self.successResultOf(d)
        self.victim = b
        self.victimId = b.identity.nodeId
        self.targets = {}
        for t in TARGETS:
            self.targets[t] = Collector()
            self.world.net.attach(t, self.targets[t])
        self.heard = []
        self.mallory.signalling.setSignalReceiver(lambda peer, payload, observed: self.heard.append(payload))

    def _offer(self, punchId=b"P" * 8):
        payload = bytes((sw.OFFER,)) + punchId + b"S" * 16 + sw.encodeCandidates(TARGETS)
        self.mallory.sig.sendSignal(self.victimId, payload)
        self.world.pump(0.2)

    def test_strangerOfferNotAnsweredNorProbed(self):
        """Old code: the victim answered with its candidates and probed all 17 addresses."""
        self._offer()
        self.world.pump(4.0, step=0.05)
        self.assertEqual(self.heard, [], "the victim answered a stranger (and told it its addresses)")
        probed = {t: len(c.got) for t, c in self.targets.items() if c.got}
        self.assertEqual(probed, {})
        self.assertEqual(self.victim.puncher.counters["probes_sent"], 0)
        self.assertEqual(self.victim.counters["stranger"], 1)

    def test_strangerRelayedIgnored(self):
        """Old code: RELAYED after an OFFER made the victim send link handshakes to any address for 10 s."""
        self._offer(b"Q" * 8)
        target = TARGETS[0]
        self.mallory.sig.sendSignal(self.victimId, bytes((sw.RELAYED,)) + b"Q" * 8 + sw.encodeAddress(target))
        self.world.pump(11.0, step=0.1)
        self.assertEqual(self.targets[target].got, [])

    def test_configuredPeersStillConnect(self):
        a, b = self.world.peers
        self._offer()
        d = a.connect(b.identity.nodeId)
        self.world.pump(5.0)
        link, path = self.successResultOf(d)
        self.assertEqual(path, "direct")

    def test_answerFromAnotherNodeIgnored(self):
        """An ANSWER counts only from the node we offered to (a relay could otherwise redirect our punch)."""
        a, b = self.world.peers
        sent = []
        original = a.signalling.sendSignal

        def spy(peerId, payload):
            sent.append(payload)
            return original(peerId, payload)

        a.signalling.sendSignal = spy
        d = a.connect(b.identity.nodeId)
        punchId = sent[0][1:9]
        # The stranger knows the punch id (say, from a hostile relay) and answers first.
        a._signal(self.mallory.identity.nodeId, bytes((sw.ANSWER,)) + punchId + sw.encodeCandidates(TARGETS[:1]),
                  TARGETS[1])
        self.world.pump(5.0)
        link, path = self.successResultOf(d)
        self.assertEqual(link.peerId, b.identity.nodeId)
        self.assertEqual([t for t in TARGETS[:2] if self.targets[t].got], [])
