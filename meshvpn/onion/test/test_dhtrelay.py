"""DHT datagrams carried by a circuit's last hop: what goes out, what comes back, and the reflector attack refused."""

import random

from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from meshvpn.dht import wire
from meshvpn.onion.cells import RelayCommand
from meshvpn.onion.dhtmsgs import (
    MAX_DATAGRAM, NOT_A_NODE, NOT_DHT, RATE_LIMITED, DatagramMessageError, Reassembler, decodeRefusal, encodePieces,
)
from meshvpn.onion.dhtrelay import DatagramRelayLimits, DHTDatagramRelay
from meshvpn.onion.origin import OriginCircuit
from meshvpn.tools.onionfakes import MemoryNetwork, TestRelay

NODE = ("198.18.0.7", 9000)
VICTIM = ("198.18.200.1", 53)
RELAY_ADDR = ("198.18.0.2", 9000)
KEY = bytes(range(32))


def request(kind=wire.FIND_NODE, flags=wire.FLAG_CLIENT, txid=b"T" * 8):
    payload = {wire.PING: None, wire.FIND_NODE: b"\x01" * 32, wire.FIND_VALUE: b"\x02" * 32,
               wire.STORE: b"\x01" * 100}.get(kind)
    return wire.encode(kind, txid, KEY, payload, flags)


def answer(txid=b"T" * 8, kind=wire.NODES, payload=()):
    return wire.encode(kind, txid, bytes(32), list(payload) if kind == wire.NODES else payload)


class Net:
    """A client, a guard and a middle whose DHT socket is a list; the middle carries DHT datagrams."""

    def __init__(self, case, limits=None, relay=True):
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.net = MemoryNetwork(self.clock)
        self.dir = {}
        self.guard = TestRelay(self.net, self.clock, "guard", directory=self.dir)
        self.middle = TestRelay(self.net, self.clock, "middle", directory=self.dir)
        self.client = TestRelay(self.net, self.clock, "client", directory=self.dir)
        self.client.switch.keyRing = None
        self.sent = []  # (data, addr) out of the middle's DHT socket
        self.known = {NODE, RELAY_ADDR}
        self.relay = DHTDatagramRelay(self.clock, lambda d, a: self.sent.append((d, a)), self.known.__contains__,
                                      limits)
        if relay:
            self.middle.switch.datagramRelay = self.relay

    def circuit(self):
        link = self.client.linkTo(self.guard.nodeId, True)
        circ = OriginCircuit(self.client.switch, link, [self.guard.hopSpec(), self.middle.hopSpec()])
        d = circ.build()
        self.net.pump()
        got = []
        d.addBoth(got.append)
        assert got == [circ], got
        circ.back = []
        circ.setDatagramReceiver(lambda command, body: circ.back.append((command, body)))
        return circ

    def send(self, circ, datagram, addr=NODE):
        for piece in encodePieces(datagram, addr, circ.maxData):
            circ.sendRelay(RelayCommand.DHT_SEND, 0, piece)
        self.net.pump()

    def received(self, circ):
        """Whole datagrams and refusals that came back on C{circ}."""
        r, out = Reassembler(), []
        for command, body in circ.back:
            if command == RelayCommand.DHT_REFUSED:
                out.append(("refused", decodeRefusal(body)))
            else:
                whole = r.feed(body)
                if whole is not None:
                    out.append(whole)
        return out


class Carrying(unittest.TestCase):
    def test_requestOutAnswerBack(self):
        """A client's FIND_NODE leaves from the middle's socket as sent; the answer returns, byte for byte."""
        n = Net(self)
        circ = n.circuit()
        req = request()
        n.send(circ, req)
        self.assertEqual(n.sent, [(req, NODE)])
        peers = [wire.Peer.of(bytes([i]) * 32, bytes(8), (f"198.18.1.{i}", 9000)) for i in range(1, 21)]
        ans = answer(payload=peers)
        self.assertGreater(len(ans), 494)  # several pieces
        self.assertTrue(n.relay.datagramReceived(ans, NODE))
        n.net.pump()
        self.assertEqual(n.received(circ), [(ans, NODE)])
        # the contacts it named are DHT nodes now, as far as this relay is concerned
        n.send(circ, request(txid=b"U" * 8), ("198.18.1.5", 9000))
        self.assertEqual(n.sent[-1][1], ("198.18.1.5", 9000))

    def test_oneAnswerPerRequest(self):
        """A node that answers twice (or a spoofer replaying an answer) gets one answer carried."""
        n = Net(self)
        circ = n.circuit()
        n.send(circ, request())
        ans = answer()
        self.assertTrue(n.relay.datagramReceived(ans, NODE))
        self.assertFalse(n.relay.datagramReceived(ans, NODE))  # not ours any more: the DHT node drops it
        n.net.pump()
        self.assertEqual(len(n.received(circ)), 1)

    def test_answerFromElsewhereIsNotCarried(self):
        """The transaction id from another address, or of another kind, is no answer to the client."""
        n = Net(self)
        circ = n.circuit()
        n.send(circ, request())
        self.assertFalse(n.relay.datagramReceived(answer(), ("198.18.0.8", 9000)))
        self.assertTrue(n.relay.datagramReceived(answer(kind=wire.PONG, payload=NODE), NODE))  # wrong kind: dropped
        n.net.pump()
        self.assertEqual(n.received(circ), [])
        self.assertEqual(n.relay.counters["dropped_wrong_kind"], 1)

    def test_ownRequestLoopingBackIsTheDHTs(self):
        """A client asking this relay's own DHT node: the request reaching our socket is not taken as an answer."""
        n = Net(self)
        circ = n.circuit()
        req = request(txid=b"V" * 8)
        n.send(circ, req, RELAY_ADDR)
        self.assertFalse(n.relay.datagramReceived(req, RELAY_ADDR))

    def test_answersExpire(self):
        n = Net(self)
        circ = n.circuit()
        n.send(circ, request())
        n.clock.advance(n.relay.limits.answerTimeout + 1)
        self.assertFalse(n.relay.datagramReceived(answer(), NODE))
        self.assertEqual(n.relay.status()["pending"], 0)

    def test_closedCircuitForgetsItsRequests(self):
        n = Net(self)
        circ = n.circuit()
        n.send(circ, request())
        circ.close()
        n.net.pump()
        self.assertEqual(n.relay.status()["pending"], 0)
        self.assertFalse(n.relay.datagramReceived(answer(), NODE))


class Reflector(unittest.TestCase):
    """The attack: use the relay to send chosen UDP to a victim, or to multiply traffic."""

    def assertRefused(self, n, circ, datagram, addr, reason):
        before = len(n.sent)
        n.send(circ, datagram, addr)
        self.assertEqual(len(n.sent), before, "something left the relay's socket")
        self.assertEqual(n.received(circ)[-1], ("refused", reason))
        self.assertEqual(circ.state.name, "OPEN")

    def test_notADHTNode(self):
        """A perfect DHT request to a victim's DNS port is not sent."""
        n = Net(self)
        circ = n.circuit()
        self.assertRefused(n, circ, request(), VICTIM, NOT_A_NODE)

    def test_notADHTRequest(self):
        """Chosen bytes, answers and requests not marked as a client's are not sent, even to a node."""
        n = Net(self)
        circ = n.circuit()
        self.assertRefused(n, circ, b"\x80" + b"GET / HTTP/1.0\r\n" * 10, NODE, NOT_DHT)
        self.assertRefused(n, circ, answer(), NODE, NOT_DHT)
        self.assertRefused(n, circ, request(wire.FIND_NODE, flags=0), NODE, NOT_DHT)
        self.assertRefused(n, circ, request(wire.STORE, flags=0), NODE, NOT_DHT)
        self.assertEqual(n.relay.counters["refused_not_dht"], 4)
        n.send(circ, request(wire.STORE), NODE)  # a client's STORE (its mesh rendezvous record) goes
        self.assertEqual(len(n.sent), 1)

    def test_perCircuitRate(self):
        """A flood on one circuit gets its burst out, then refusals; another circuit still goes through."""
        limits = DatagramRelayLimits(perCircuitRate=5, perCircuitBurst=10, pendingPerCircuit=1000)
        n = Net(self, limits)
        circ = n.circuit()
        for i in range(100):
            n.send(circ, request(txid=i.to_bytes(8, "big")))
        self.assertEqual(len(n.sent), 10)
        self.assertEqual(n.relay.counters["refused_rate"], 90)
        other = n.circuit()
        n.send(other, request(txid=b"O" * 8))
        self.assertEqual(len(n.sent), 11)
        n.clock.advance(1)
        n.send(circ, request(txid=b"L" * 8))
        self.assertEqual(len(n.sent), 12)  # the bucket refills at its rate

    def test_totalRate(self):
        """Many circuits together get no more than the relay's total."""
        limits = DatagramRelayLimits(rate=1, burst=8)
        n = Net(self, limits)
        circuits = [n.circuit() for _ in range(4)]
        for i in range(20):
            n.send(circuits[i % 4], request(txid=i.to_bytes(8, "big")))
        self.assertEqual(len(n.sent), 8)

    def test_outstandingBounded(self):
        """Requests never answered do not pile up: past the per-circuit cap they are refused."""
        n = Net(self, DatagramRelayLimits(pendingPerCircuit=3))
        circ = n.circuit()
        for i in range(5):
            n.send(circ, request(txid=i.to_bytes(8, "big")))
        self.assertEqual(len(n.sent), 3)
        self.assertEqual(n.received(circ)[-1], ("refused", RATE_LIMITED))

    def test_noAmplification(self):
        """What comes back per request is one answer of at most 1400 bytes, and only to the circuit."""
        n = Net(self)
        circ = n.circuit()
        n.send(circ, request(wire.PING))
        for _ in range(5):
            n.relay.datagramReceived(answer(kind=wire.PONG, payload=("198.18.0.2", 9000)), NODE)
        n.net.pump()
        [(data, addr)] = n.received(circ)
        self.assertLessEqual(len(data), MAX_DATAGRAM)

    def test_malformedPiecesCloseOnlyThatCircuit(self):
        n = Net(self)
        bad, good = n.circuit(), n.circuit()
        bad.sendRelay(RelayCommand.DHT_SEND, 0, b"\x00\x02\x09garbage")
        n.net.pump()
        self.assertEqual(bad.state.name, "CLOSED")
        n.send(good, request())
        self.assertEqual(len(n.sent), 1)

    def test_notAtAMiddleHop(self):
        """DHT_SEND is for the circuit's last hop: at a hop it passes through, the circuit is destroyed."""
        n = Net(self)
        exit = TestRelay(n.net, n.clock, "exit", directory=n.dir)
        link = n.client.linkTo(n.guard.nodeId, True)
        circ = OriginCircuit(n.client.switch, link, [n.guard.hopSpec(), n.middle.hopSpec(), exit.hopSpec()])
        circ.build()
        n.net.pump()
        for piece in encodePieces(request(), NODE, circ.maxData):
            circ.sendRelay(RelayCommand.DHT_SEND, 0, piece, hop=1)
        n.net.pump()
        self.assertEqual(circ.state.name, "CLOSED")
        self.assertEqual(n.sent, [])

    def test_relayThatCarriesNothingRefusesTheCommand(self):
        n = Net(self, relay=False)
        circ = n.circuit()
        n.send(circ, request())
        self.assertEqual(circ.state.name, "CLOSED")
        self.assertEqual(n.sent, [])


class Pieces(unittest.TestCase):
    def test_roundTrip(self):
        for size in (1, 100, 475, 476, 1000, MAX_DATAGRAM):
            data = bytes(random.Random(size).randbytes(size))
            for addr in (NODE, ("2001:db8::1", 9000)):
                r = Reassembler()
                out = [r.feed(p) for p in encodePieces(data, addr, 488)]
                self.assertEqual(out[-1], (data, addr))
                self.assertTrue(all(p is None for p in out[:-1]))

    def test_tooLong(self):
        self.assertRaises(DatagramMessageError, encodePieces, bytes(MAX_DATAGRAM + 1), NODE, 488)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=600), max_size=12))
    def test_anyBytes(self, bodies):
        """Whatever arrives, the only error is the declared one and nothing longer than 1400 bytes comes out."""
        r = Reassembler()
        for body in bodies:
            try:
                whole = r.feed(body)
            except DatagramMessageError:
                continue
            if whole is not None:
                self.assertLessEqual(len(whole[0]), MAX_DATAGRAM)
