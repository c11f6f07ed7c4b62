"""PROBE records (0x09, link version 5): one encoding, malformed bodies close only the link that sent them, never to an older peer."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.link import probewire, wire
from meshvpn.link.protocol import LinkSettings, State
from meshvpn.link.test.helpers import linkPair

BEFORE_PROBE = LinkSettings(versions=(1, 2, 3, 4))


class CodecTests(unittest.TestCase):
    def test_roundTrip(self):
        record = probewire.encodeProbe(7, b"abc", echo=True)
        self.assertEqual(record[0], wire.PROBE)
        self.assertEqual(probewire.decodeProbe(record[3:]), (7, b"abc", True))
        self.assertEqual(probewire.decodeProbe(probewire.encodeProbe(2**32 - 1, bytes(1000))[3:]),
                         (2**32 - 1, bytes(1000), False))

    def test_refusedToEncode(self):
        for seq, data in ((-1, b"x"), (2**32, b"x"), (1, b""), (1, bytes(probewire.MAX_DATA + 1))):
            self.assertRaises(ValueError, probewire.encodeProbe, seq, data)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=1100))
    def test_anyBodyDecodesOrIsRefused(self, body):
        try:
            seq, data, echo = probewire.decodeProbe(body)
        except wire.LinkProtocolError as e:
            self.assertIn("PROBE", str(e))
            return
        self.assertEqual(probewire.encodeProbe(seq, data, echo)[3:], body)


class OnTheLinkTests(unittest.TestCase):
    def test_probeAndEchoReachTheHandler(self):
        client, server, pump, _, _ = linkPair()
        self.assertEqual(client.version, 5)
        got = []
        server.onProbe = lambda link, seq, data, echo: got.append((link, seq, data, echo))
        client.onProbe = lambda link, seq, data, echo: got.append((link, seq, data, echo))
        self.assertTrue(client.sendProbe(1, b"random"))
        pump.flush()
        self.assertTrue(server.sendProbe(1, b"random", echo=True))
        pump.flush()
        self.assertEqual(got, [(server, 1, b"random", False), (client, 1, b"random", True)])

    def test_neverToAnOlderPeer(self):
        client, server, pump, _, _ = linkPair(clientSettings=LinkSettings(), serverSettings=BEFORE_PROBE)
        self.assertEqual(client.version, 4)
        self.assertFalse(client.sendProbe(1, b"x"))
        pump.flush()
        self.assertIs(server.state, State.OPEN)

    def test_probeOnAVersion4LinkIsAViolation(self):
        """The attack: a peer that negotiated version 4 sends a version-5 record anyway."""
        client, server, pump, _, _ = linkPair(clientSettings=LinkSettings(), serverSettings=BEFORE_PROBE)
        client.transport.write(probewire.encodeProbe(1, b"x"))
        pump.flush()
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("PROBE in state open on a version 4 link", str(server.closeReason))

    def test_aMalformedProbeClosesOnlyItsLink(self):
        client, server, pump, _, _ = linkPair()
        other, otherServer, otherPump, _, _ = linkPair()
        client.transport.write(wire.encodeControl(wire.PROBE, b"\x07" + bytes(8)))
        pump.flush()
        self.assertIs(server.state, State.CLOSED)
        self.assertIn("PROBE of unknown kind 7", str(server.closeReason))
        self.assertIs(otherServer.state, State.OPEN)

    def test_notQueuedWhileWritesAreBlocked(self):
        client, server, pump, _, _ = linkPair()
        client._writePaused(True)  # what the transport does when its buffer is full
        self.assertFalse(client.sendProbe(1, b"x"))
        client._writePaused(False)
        self.assertTrue(client.sendProbe(1, b"x"))
