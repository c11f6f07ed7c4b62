"""
CGO relay crypto on circuits, through the relay code a real relay runs
(switch, channels, relay circuits, the origin circuit) over in-memory links:
negotiated per hop, the original scheme only with relays that do not list
CGO, the downgrade refused, 488-byte messages and 16-byte SENDME tags, runs
of cells, and the tagging attack the original scheme lets through and CGO
stops.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.onion import cgohops
from meshvpn.onion import circhandshake as ch
from meshvpn.onion.cells import (
    CGO_RELAY_DATA_LEN, RELAY_DATA_LEN, CellError, Command, RelayCommand, packRelay, unpackRelay,
)
from meshvpn.onion.cgorelaycircuit import CgoRelayCircuit
from meshvpn.onion.destroy import CircuitDestroyed
from meshvpn.onion.relaycircuit import RelayCircuit
from meshvpn.onion.test.test_circuit import SECRET, Net

OLD_RELAY = (ch.NTOR, ch.NTOR3)  # what a relay without CGO lists


class Negotiation(unittest.TestCase):
    def test_everyHopCgo(self):
        n = Net(self)
        circ = n.built(self)
        self.assertEqual(circ.crypto.schemes, [ch.CGO] * 3)
        self.assertEqual(circ.status()["relay_crypto"], [ch.CGO] * 3)
        self.assertEqual(circ.maxData, CGO_RELAY_DATA_LEN)
        for relay in (n.guard, n.middle, n.exit):
            self.assertIn("cgo", relay.switch.advertisedHandshakes())
            self.assertEqual(relay.switch.counters["created_cgo"], 1)
            self.assertIsInstance(n.relayCircuit(relay), CgoRelayCircuit)
        got = []
        circ.setPacketReceiver(got.extend)
        circ.sendPackets([SECRET])
        n.net.pump()
        self.assertEqual((n.edge.packets, got), ([SECRET], [SECRET[::-1]]))

    def test_oldSchemeOnlyForARelayWithoutCgo(self):
        n = Net(self)
        path = [n.guard.hopSpec(), n.middle.hopSpec(handshakes=OLD_RELAY), n.exit.hopSpec()]
        circ, d = n.circuit(path)
        self.successResultOf(d)
        self.assertEqual(circ.crypto.schemes, [ch.CGO, ch.TOR1, ch.CGO])
        self.assertIs(type(n.relayCircuit(n.middle)), RelayCircuit)
        got = []
        circ.setPacketReceiver(got.extend)
        packets = [bytes([0x45, i]) * (100 + 37 * i) for i in range(40)]  # runs of cells both ways
        circ.sendPackets(packets)
        n.net.pump()
        self.assertEqual(n.edge.packets, packets)
        self.assertEqual(got, [p[::-1] for p in packets])

    def test_exitWithoutCgoSetsTheDataSize(self):
        n = Net(self)
        path = [n.guard.hopSpec(), n.middle.hopSpec(), n.exit.hopSpec(handshakes=OLD_RELAY)]
        circ, d = n.circuit(path)
        self.successResultOf(d)
        self.assertEqual(circ.crypto.schemes, [ch.CGO, ch.CGO, ch.TOR1])
        self.assertEqual(circ.maxData, RELAY_DATA_LEN)

    def test_advertisedButAnsweredWithoutCgoIsRefused(self):
        """The downgrade: the descriptor lists CGO, the relay's answer picks the original scheme."""
        n = Net(self)
        path = [n.guard.hopSpec(), n.middle.hopSpec(), n.exit.hopSpec()]
        self.assertIn("cgo", path[2].handshakes)
        n.exit.switch.relaySchemes = (ch.TOR1,)
        circ, d = n.circuit(path)
        f = self.failureResultOf(d, CircuitDestroyed)
        self.assertIn("downgrade refused", f.value.args[1] if len(f.value.args) > 1 else str(f.value))
        self.assertTrue(circ.closed)


class Messages(unittest.TestCase):
    def test_fullDataCellsAndSendmes(self):
        """488-byte DATA bodies both ways, past several circuit windows: 16-byte tags in every SENDME."""
        n = Net(self)
        circ = n.built(self)
        chunk = bytes(range(256)) * 2
        sent = 0
        for _ in range(12):
            room = circ.circuitRoom()
            chunks = [chunk[:CGO_RELAY_DATA_LEN]] * min(room, 50)
            self.assertTrue(circ.sendDataRun(1, chunks))
            sent += len(chunks)
            n.net.pump()
        data = b"".join(d for c, s, d in n.edge.relay if c == RelayCommand.DATA)
        self.assertEqual(data, chunk[:CGO_RELAY_DATA_LEN] * sent)
        self.assertGreater(sent, 300)  # SENDMEs from the exit reopened the window
        # And back: the origin's SENDMEs carry the exit's 16-byte tags.
        exitCircuit, back = n.relayCircuit(n.exit), 0
        for _ in range(12):
            chunks = [chunk[:CGO_RELAY_DATA_LEN]] * min(exitCircuit.circuitRoom(), 50)
            self.assertTrue(exitCircuit.sendDataRun(1, chunks))
            back += len(chunks)
            n.net.pump()
        self.assertGreater(back, 300)
        self.assertFalse(circ.closed)

    def test_streamsAttachedBeforeTheBuildUseTheLastHopsSize(self):
        """
        The client attaches the stream layer before building (the builder's
        onCircuit): its DATA size must be the finished circuit's, or every
        upload past 488 bytes per cell is refused at the origin (seen: a
        wallet's purchase request through a CGO circuit).
        """
        from meshvpn.streams.edge import attachStreams
        from meshvpn.onion.origin import OriginCircuit

        n = Net(self)
        path = [n.guard.hopSpec(), n.middle.hopSpec(), n.exit.hopSpec()]
        circ = OriginCircuit(n.client.switch, n.client.linkTo(path[0].nodeId, False), path, buildTimeout=10.0)
        mux = attachStreams(circ)
        d = circ.build()
        n.net.pump()
        self.successResultOf(d)
        self.assertEqual(mux.maxData, CGO_RELAY_DATA_LEN)
        self.assertTrue(mux.sendData(1, [b"u" * mux.maxData] * 3))
        n.net.pump()
        data = [d for c, s, d in n.edge.relay if c == RelayCommand.DATA]
        self.assertEqual(b"".join(data), b"u" * CGO_RELAY_DATA_LEN * 3)

    def test_overlongDataRefused(self):
        n = Net(self)
        circ = n.built(self)
        self.assertRaises(CellError, circ.sendRelay, RelayCommand.DATA, 1, b"x" * (CGO_RELAY_DATA_LEN + 1))


class _ExitView:
    """The colluding exit: looks at what its layer gives for the pattern where the guard put it, and removes it."""

    def __init__(self, layer, pattern, at):
        self._layer, self.pattern, self.at, self.found = layer, pattern, at, 0

    def _strip(self, out):
        at, pattern = self.at, self.pattern
        seen = bytes(a ^ b for a, b in zip(out[at:at + len(pattern)], pattern))
        if out[at:at + len(pattern)] == pattern or seen == bytes(len(pattern)):
            self.found += 1
            return out[:at] + seen + out[at + len(pattern):]
        return out

    def __getattr__(self, name):
        return getattr(self._layer, name)

    def decryptForward(self, data):  # the original scheme (a run is several cells joined)
        out = self._layer.decryptForward(data)
        return b"".join(self._strip(out[k:k + 509]) for k in range(0, len(out), 509))

    def forward(self, cmd, payload):  # CGO
        out, tag = self._layer.forward(cmd, payload)
        return self._strip(out), tag


class Tagging(unittest.TestCase):
    """
    A guard XORs a pattern into the cells it passes on; the exit, colluding,
    looks for it in what its layer gives and XORs it out.  The original
    scheme lets the pattern through (the exit sees it and the circuit lives
    on: the pair has linked the client to its traffic); with CGO the middle's
    layer turns the tagged cell into noise, the exit finds nothing, and the
    circuit dies.
    """

    PATTERN, AT = bytes(range(1, 33)), 300  # into the zero padding of a short cell

    def attack(self, handshakes):
        n = Net(self)
        path = [n.guard.hopSpec(handshakes=handshakes), n.middle.hopSpec(handshakes=handshakes),
                n.exit.hopSpec(handshakes=handshakes)]
        circ, d = n.circuit(path)
        self.successResultOf(d)
        toMiddle = n.channel(n.guard, n.middle).link
        send = toMiddle.sendCells

        def tagging(cells):
            out = []
            for c in cells:
                if c[4] == Command.RELAY:
                    at = 5 + self.AT
                    c = c[:at] + bytes(a ^ b for a, b in zip(c[at:at + 32], self.PATTERN)) + c[at + 32:]
                out.append(c)
            send(out)

        toMiddle.sendCells = tagging
        exitCircuit = n.relayCircuit(n.exit)
        view = exitCircuit.layer = _ExitView(exitCircuit.layer, self.PATTERN, self.AT)
        circ.sendPackets([SECRET])
        n.net.pump()
        return n, circ, view

    def test_originalSchemeLetsThePatternThrough(self):
        n, circ, view = self.attack(OLD_RELAY)
        self.assertEqual(view.found, 1)
        self.assertEqual(n.edge.packets, [SECRET])
        self.assertFalse(circ.closed)

    def test_cgoKillsTheCircuitInstead(self):
        n, circ, view = self.attack(None)
        self.assertEqual(circ.crypto.schemes, [ch.CGO] * 3)
        self.assertEqual(view.found, 0)
        self.assertEqual(n.edge.packets, [])
        self.assertTrue(circ.closed)


class BodyParsing(unittest.TestCase):
    """The CGO body in the common layout: any recognized cell either parses within the body or is refused."""

    @given(st.binary(min_size=509, max_size=509))
    def test_anyRecognizedCell(self, cell):
        try:
            plain = cgohops.fromCell(cell)
        except CellError:
            self.assertGreater((cell[19] << 8) | cell[20], CGO_RELAY_DATA_LEN)
            return
        self.assertEqual(len(plain), 503)
        self.assertEqual(plain[:10], bytes(10))
        self.assertEqual(plain[10:], cell[16:])
        hdr = None
        try:
            hdr = unpackRelay(plain)
        except CellError:
            return
        self.assertLessEqual(len(hdr.data), CGO_RELAY_DATA_LEN)

    @given(st.integers(0, 65535), st.integers(0, 255), st.binary(max_size=RELAY_DATA_LEN))
    def test_bodyRoundTrip(self, sid, command, data):
        plain = packRelay(RelayCommand.DATA if command % 2 else RelayCommand.PACKET, sid, data)
        if len(data) > CGO_RELAY_DATA_LEN:
            self.assertRaises(CellError, cgohops.toBody, plain)
            return
        body = cgohops.toBody(plain)
        self.assertEqual(len(body), 493)
        self.assertEqual(cgohops.fromCell(bytes(16) + body), plain[:503])
