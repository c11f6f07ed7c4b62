"""What a failed or dead origin circuit says about who failed: the facts the circuit manager recovers with.

- a CREATED2 that never comes is charged to nobody (a starved machine is
  slow, and a guard that really hangs is caught by its link's PING);
- a refused extension names the hop that was being added (C{extending}),
  never as the hop at fault (C{hop});
- a guard link closed as silent (no PONG) says so (C{silent}).
"""

from twisted.trial import unittest

from meshvpn.errors import LinkError, LinkSilent
from meshvpn.onion.cells import DestroyReason
from meshvpn.onion.destroy import CircuitDestroyed
from meshvpn.onion.origin import OriginCircuit
from meshvpn.onion.test.hostile import HostileNet


class BuildBlameTests(unittest.TestCase):
    def test_unansweredCreateChargedToNobody(self):
        """The guard never answers CREATE2 (its cells are never delivered): the build times out naming no hop."""
        n = HostileNet(timeout=5)
        path = [r.hopSpec() for r in (n.guard, n.middle, n.exit)]
        link = n.client.linkTo(path[0].nodeId, anonymous=True)
        circ = OriginCircuit(n.client.switch, link, path, buildTimeout=5)
        d = circ.build()  # not pumped: the CREATE2 never arrives
        n.clock.advance(5)
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertEqual(f.value.reason, DestroyReason.TIMEOUT)
        self.assertIsNone(f.value.hop)
        self.assertIsNone(f.value.extending)

    def test_refusedExtendNamesTheHopBeingAdded(self):
        n = HostileNet(guard="extend=truncated")
        circ, d = n.build()
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertIsNone(f.value.hop)
        self.assertEqual(f.value.extending, 1)

    def test_silentGuardLinkSaysSo(self):
        n = HostileNet()
        circ, d = n.build()
        self.successResultOf(d)
        circ.channel.link.closeReason = LinkSilent("peer answered no PING for 4.0s")
        circ.linkClosed(circ.channel)
        reason = n.closedReason(circ)
        self.assertTrue(reason.silent)
        self.assertEqual(reason.hop, 0)
        self.assertIn("no PING", str(reason))

    def test_closedGuardLinkIsNotSilent(self):
        n = HostileNet()
        circ, d = n.build()
        self.successResultOf(d)
        circ.channel.link.closeReason = LinkError("connection lost")
        circ.linkClosed(circ.channel)
        self.assertFalse(n.closedReason(circ).silent)
