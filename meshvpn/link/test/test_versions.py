"""Nodes of three releases side by side on real TLS links: one older, this one, one newer.

 - the older release speaks link version 1 and lists no circuit versions
   (exactly the first release's VERSIONS record: C{00 01});
 - this release speaks link versions 1 to 5 (2 adds CLOSE, 3 PING/PONG, 4 DIRECTORY, 5 PROBE) and circuit
   versions 1 to 3;
 - a newer release is modelled by what it puts on the wire: link versions
   3 to 6 (it dropped 1 and 2) and circuit versions 1 to 4.

Each pair opens at the highest version both speak and carries cells; what
version 2 adds is used only on version 2 links; a node two releases apart
is refused with one clear reason.
"""

from twisted.trial import unittest

from meshvpn.errors import LinkError
from meshvpn.link import wire
from meshvpn.link.protocol import LinkSettings, State
from meshvpn.link.test.helpers import cell, linkPair

OLDER = LinkSettings(versions=(1,), circuitVersions=())
THIS = LinkSettings()
NEWER = LinkSettings(versions=(3, 4, 5, 6), circuitVersions=(1, 2, 3, 4))
BEFORE_DIRECTORY = LinkSettings(versions=(1, 2, 3))


def failureOf(d):
    failures = []
    d.addErrback(failures.append)
    return failures[0].value if failures else None


class SideBySideTests(unittest.TestCase):
    def pair(self, clientSettings, serverSettings):
        client, server, pump, _, _ = linkPair(clientSettings=clientSettings, serverSettings=serverSettings)
        got = []
        server.setCellReceiver(got.extend)
        self.assertTrue(client.sendCells([cell(1), cell(2)]), client.closeReason)
        pump.flush()
        self.assertEqual(got, [cell(1), cell(2)])
        return client, server, pump

    def test_olderReleaseOnTheWire(self):
        """The older node's record is byte for byte the first release's."""
        self.assertEqual(wire.encodeVersions(OLDER.versions, OLDER.circuitVersions), b"\x03\x00\x02\x00\x01")
        # And what the first release's parser makes of ours: it keeps only what it knows.
        offered = wire.decodeVersions(wire.encodeVersions(THIS.versions, THIS.circuitVersions)[3:])
        self.assertEqual(set(offered) & {1}, {1})

    def test_thisMeetsOlder(self):
        for a, b in ((THIS, OLDER), (OLDER, THIS)):
            client, server, _ = self.pair(a, b)
            self.assertEqual((client.version, server.version), (1, 1))
            self.assertEqual((client.circuitVersion, server.circuitVersion), (1, 1))

    def test_thisMeetsNewer(self):
        for a, b in ((THIS, NEWER), (NEWER, THIS)):
            client, server, _ = self.pair(a, b)
            self.assertEqual((client.version, server.version), (5, 5))
            self.assertEqual((client.circuitVersion, server.circuitVersion), (3, 3))

    def test_thisMeetsTheReleaseBeforeCircuitVersion2(self):
        previous = LinkSettings(circuitVersions=(1,))
        for a, b in ((THIS, previous), (previous, THIS)):
            client, server, _ = self.pair(a, b)
            self.assertEqual((client.circuitVersion, server.circuitVersion), (1, 1))

    def test_twoReleasesApartRefusedClearly(self):
        client, server, _, _, _ = linkPair(clientSettings=OLDER, serverSettings=NEWER)
        self.assertIs(server.state, State.CLOSED)
        self.assertIs(client.state, State.CLOSED)
        self.assertIn("no common link version (peer offers [1])", str(server.closeReason))

    def test_noCommonCircuitVersionRefused(self):
        client, server, _, _, _ = linkPair(clientSettings=LinkSettings(circuitVersions=(4,)), serverSettings=THIS)
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("no common circuit version (peer offers [4])", str(server.closeReason))

    def test_closeSaysWhyOnVersion2(self):
        client, server, pump = self.pair(THIS, THIS)
        closed = server.whenClosed()
        client.close(LinkError("node stopping"))
        pump.flush()
        self.assertIs(server.state, State.CLOSED)
        self.assertEqual(str(failureOf(closed) or closed.result), "peer closed the link: node stopping")

    def test_noCloseRecordToAVersion1Peer(self):
        """The older node never sees a record it does not know: it just sees the connection end."""
        client, server, pump = self.pair(THIS, OLDER)
        client.close(LinkError("node stopping"))
        pump.flush()
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("connection lost", str(server.closeReason))

    def test_closeOnAVersion1LinkIsAViolation(self):
        """The attack: a peer that negotiated version 1 sends a version-2 record anyway."""
        client, server, pump = self.pair(THIS, OLDER)
        client.transport.write(wire.encodeClose(wire.CLOSE_SHUTDOWN))
        pump.flush()
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("CLOSE in state open on a version 1 link", str(server.closeReason))

    def test_unknownCloseReasonFromANewerPeer(self):
        client, server, pump = self.pair(THIS, NEWER)
        client.transport.write(wire.encodeControl(wire.CLOSE, b"\x09"))
        pump.flush()
        self.assertIn("peer closed the link: reason 9", str(server.closeReason))

    def test_noDirectoryToAPeerBeforeVersion4(self):
        """A peer that did not negotiate version 4 is never sent a DIRECTORY record (it does not know it)."""
        client, server, pump = self.pair(THIS, BEFORE_DIRECTORY)
        self.assertEqual(client.version, 3)
        self.assertFalse(client.sendDirectory(b"\x01" + bytes(8)))
        pump.flush()
        self.assertIs(server.state, State.OPEN)
        client, server, pump = self.pair(THIS, THIS)
        self.assertEqual(client.version, 5)
        self.assertTrue(client.sendDirectory(b"\x01" + bytes(8)))

    def test_directoryOnAVersion3LinkIsAViolation(self):
        """The attack: a peer that negotiated version 3 sends a version-4 record anyway."""
        client, server, pump = self.pair(THIS, BEFORE_DIRECTORY)
        client.transport.write(wire.encodeControl(wire.DIRECTORY, b"\x01" + bytes(8)))
        pump.flush()
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("DIRECTORY on a version 3 link", str(server.closeReason))

    def test_downgradeIsCaught(self):
        """
        The attack: rewriting the VERSIONS records in flight to force version 1.
        TLS stops it first; the transcript under both AUTH signatures would
        stop it too: a responder that saw a different VERSIONS than the
        initiator sent signs a transcript the initiator refuses.
        """
        from meshvpn.link import auth

        sent = wire.encodeVersions(THIS.versions, THIS.circuitVersions)[3:]
        rewritten = wire.encodeVersions((1,))[3:]
        self.assertNotEqual(auth.transcriptHash(sent, sent), auth.transcriptHash(rewritten, sent))
