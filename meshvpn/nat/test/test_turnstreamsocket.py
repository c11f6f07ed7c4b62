"""The node's socket on TURN over TCP: it reopens when its stream drops, with backoff, in memory on task.Clock."""

from twisted.internet import defer, task
from twisted.trial import unittest

from meshvpn.errors import RelayError
from meshvpn.identity import NodeIdentity
from meshvpn.nat.test.test_turnstream import PEER, TURN_TCP, World
from meshvpn.nat.turn_stream_client import RelayedSocket
from meshvpn.nat.turn_stream_socket import TurnStreamBackoff, TurnStreamSocketService
from meshvpn.udpmux import DatagramMultiplexer

RELAY_ID = b"\x11" * 32


class Handler:
    def __init__(self):
        self.got = []

    def datagramReceived(self, data, addr):
        self.got.append((data, addr))


def _mux():
    mux, handler = DatagramMultiplexer(), Handler()
    mux.register("link", [0x90, 0x91], handler)
    return mux, handler


class WorldOpener:
    """Opens streams into a L{World}'s real TURN stream server, as the node would over TCP."""

    def __init__(self, world):
        self.world, self.identity, self.calls, self.clients = world, NodeIdentity.generate(), [], []

    def __call__(self, relay, protocol):
        self.calls.append(relay)
        client, _, _ = self.world.connect(self.identity)
        self.clients.append(client)
        alloc, result = self.world.allocate(client)
        if result is not alloc:
            return defer.fail(result)
        return defer.succeed(RelayedSocket(self.world.clock, alloc, protocol, client))


class FailingOpener:
    def __init__(self):
        self.calls = []

    def __call__(self, relay, protocol):
        self.calls.append(relay)
        return defer.fail(RelayError("connection refused"))


class ReconnectTests(unittest.TestCase):
    def _service(self, opener, clock, relays=((RELAY_ID, TURN_TCP),)):
        mux, handler = _mux()
        svc = TurnStreamSocketService(clock, mux, list(relays), opener)
        svc.startService()
        # Its release would wait for a relay answer no one pumps any more: not returned to trial.
        self.addCleanup(lambda: svc.running and svc.stopService() and None)
        return svc, mux, handler

    def test_streamDropThenBack(self):
        """The stream is cut: writes are dropped meanwhile, a new allocation carries the node 1 s later, both ways."""
        w = World(self)
        opener = WorldOpener(w)
        svc, mux, handler = self._service(opener, w.clock)
        first = svc.current.relayedAddress
        self.assertEqual(svc.status()["state"], "up")
        self.assertEqual(mux.getHost().port, first[1])
        mux.sendDatagram(b"\x90one", PEER)
        w.flush()
        self.assertEqual(w.peer.got, [(b"\x90one", first)])

        opener.clients[0].transport.loseConnection()
        w.flush()
        self.assertIsNone(svc.current)
        self.assertEqual(svc.status()["state"], "down")
        self.assertEqual(w.server.allocations, {})  # the relay freed it with the stream
        mux.sendDatagram(b"\x90lost", PEER)
        self.assertEqual(svc.counters["dropped_down"], 1)

        w.clock.advance(1.0)
        w.flush()
        self.assertEqual(svc.status()["state"], "up")
        second = svc.current.relayedAddress
        self.assertNotEqual(second, first)
        self.assertEqual(len(w.server.allocations), 1)
        mux.sendDatagram(b"\x90two", PEER)
        w.flush()
        self.assertEqual(w.peer.got[-1], (b"\x90two", second))
        w.net.queue.append((PEER, second, b"\x91back"))
        w.flush()
        self.assertEqual(handler.got, [(b"\x91back", PEER)])
        self.assertEqual((svc.counters["opened"], svc.counters["lost"]), (2, 1))

    def test_backoffDoublesToItsCeiling(self):
        """A relay that refuses is retried after 1, 2, 4 ... s, never more often than every 60 s at the end."""
        clock, opener = task.Clock(), FailingOpener()
        svc, _, _ = self._service(opener, clock)
        delays = []
        for _ in range(9):
            (call,) = clock.getDelayedCalls()
            delays.append(call.getTime() - clock.seconds())
            clock.advance(delays[-1])
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60])
        self.assertEqual(len(opener.calls), 10)
        self.assertEqual(svc.status()["last_error"], "connection refused")

    def test_streamCutAtOnceKeepsBackingOff(self):
        """A stream that drops right after each allocation is not reopened at once every time; one that lasted is."""
        backoff = TurnStreamBackoff()
        self.assertEqual([backoff.lasted(0.5) for _ in range(4)], [1, 2, 4, 8])
        self.assertEqual(backoff.lasted(31.0), 1)

    def test_relaysTriedInTurn(self):
        clock, opener = task.Clock(), FailingOpener()
        other = (b"\x22" * 32, ("198.18.0.2", 3478))
        self._service(opener, clock, relays=[(RELAY_ID, TURN_TCP), other])
        clock.advance(1)
        clock.advance(2)
        self.assertEqual(opener.calls, [(RELAY_ID, TURN_TCP), other, (RELAY_ID, TURN_TCP)])

    def test_stopLeavesNothingScheduled(self):
        """Stopped while down: no retry stays scheduled; stopped while up: the allocation is released."""
        clock = task.Clock()
        svc, _, _ = self._service(FailingOpener(), clock)
        svc.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

        w = World(self)
        svc, _, _ = self._service(WorldOpener(w), w.clock)
        svc.stopService()
        w.flush()
        self.assertEqual(w.server.allocations, {})
        self.assertEqual(svc.status()["state"], "stopped")

    def test_openingThatNeverEndsIsCancelledOnStop(self):
        clock = task.Clock()
        pending = defer.Deferred()
        svc, _, _ = self._service(lambda relay, protocol: pending, clock)
        svc.stopService()
        self.assertTrue(pending.called)  # cancelled (and the cancellation consumed: no retry, nothing logged)
        self.assertEqual(clock.getDelayedCalls(), [])
