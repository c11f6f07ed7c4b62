"""The circuit switch: a node's channels and the circuits they carry.

Every link the node uses for circuits gets a L{Channel} (its circuit map and
outbound queue).  The switch is what the link plane talks to (an
L{ICellHandler}), what answers CREATE2 (ntor with the node's onion keys,
within per-peer limits: circuits per peer link and a CREATE2 rate), and
what finds the link an EXTEND2 asks for.  Cells themselves are switched by
the channels and the circuits (L{meshvpn.onion.relaycircuit}).
"""

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from meshvpn.errors import LinkError
from meshvpn.interfaces import ICellHandler, IStatusSource
from meshvpn.onion import ntor
from meshvpn.onion.cells import Command, Create2, Created2, DestroyReason, encodeCell
from meshvpn.onion.channel import Channel
from meshvpn.onion.flusher import ChannelFlusher
from meshvpn.onion.nulledge import NullEdge
from meshvpn.onion.relaycircuit import RelayCircuit
from meshvpn.onion.relaycrypto import RelayLayer


@attrs.define
class SwitchLimits:
    """Per-peer limits and queue bounds (cells), applied to each channel."""

    maxCircuitsPerPeer: int = 1024
    createRate: float = 50.0        # CREATE2 per second per peer link, sustained
    createBurst: int = 100
    queueHigh: int = 1024           # pause feeding links above this many queued cells
    queueLow: int = 256             # resume them below this
    queueLimit: int = 4096          # hard cap: the circuit that overfills is destroyed


@implementer(ICellHandler, IStatusSource)
class CircuitSwitch:
    """
    All circuits of one node: relay hops it carries and circuits it originates.

    @param nodeId: this node's 32-byte id (ntor's ID, and the circuit id bit).
    @param keyRing: an L{OnionKeyRing}, or C{None} for a node that relays nothing.
    @param connector: C{callable(Extend2) -> Deferred[ILink]} opening a link to
        an EXTEND2 target (the link manager); links already attached to that
        peer are reused first.
    @param edge: the L{meshvpn.interfaces.ICircuitEdge} for cells that end here.
    """

    def __init__(self, clock, nodeId, keyRing=None, connector=None, edge=None, limits=None):
        self.clock = clock
        self.nodeId = nodeId
        self.keyRing = keyRing
        self.connector = connector
        self.edge = edge or NullEdge()
        self.limits = limits or SwitchLimits()
        self.flusher = ChannelFlusher(clock)
        self._channels = {}  # link -> Channel
        self.readLimiter = None  # a LinkReadLimiter when the relay has a bandwidth limit
        self.counters = {
            "circuits_created": 0, "circuits_destroyed": 0, "create_refused": 0,
            "cells_unknown_circuit": 0, "protocol_errors": 0, "link_pauses": 0,
            "queue_overflows": 0,
        }

    # -- channels

    def attachLink(self, link):
        """Start switching cells of C{link} (idempotent); @return: its L{Channel}."""
        channel = self._channels.get(link)
        if channel is not None:
            return channel
        channel = Channel(self, link)
        self._channels[link] = channel
        link.setCellReceiver(channel.receive)
        if IConsumer.providedBy(link):
            link.registerProducer(channel, True)
        link.whenClosed().addBoth(channel.linkClosed)
        return channel

    def channels(self):
        """@return: the open channels (a new list)."""
        return list(self._channels.values())

    def channelClosed(self, channel):
        """C{channel}'s link is gone: forget it."""
        self._channels.pop(channel.link, None)
        if self.readLimiter is not None:
            self.readLimiter.forget(channel)

    # ICellHandler: register the switch with linkManager.setCellHandler(switch).

    def linkOpened(self, link):
        self.attachLink(link)

    def cellsReceived(self, link, cells):
        self.attachLink(link).receive(cells)

    def linkClosed(self, link, reason):
        channel = self._channels.get(link)
        if channel is not None:
            channel.linkClosed(reason)

    def linkToPeer(self, peerId):
        for channel in self._channels.values():
            if channel.peerId == peerId and not channel.closed:
                return channel.link
        return None

    def connectTo(self, ext):
        """@return: a Deferred link to the target of the L{Extend2} C{ext}, reusing an open one."""
        existing = self.linkToPeer(ext.nodeId)
        if existing is not None:
            return defer.succeed(existing)
        if self.connector is None:
            return defer.fail(LinkError("no link to the EXTEND2 target and no connector"))
        return defer.maybeDeferred(self.connector, ext)

    # -- relay side

    def createReceived(self, channel, circId, payload):
        """
        A CREATE2 for the new circuit C{circId} (from the peer's half of the
        id space, not in use) arrived on C{channel}: answer it or refuse it
        with DESTROY RESOURCELIMIT.
        """
        refuse = None
        if self.keyRing is None:
            refuse = "this node relays no circuits"
        elif channel.peerCircuits >= self.limits.maxCircuitsPerPeer:
            refuse = "too many circuits from this peer"
        elif not channel.createBucket.tryConsume():
            refuse = "CREATE2 rate limit"
        if refuse:
            self.counters["create_refused"] += 1
            channel.sendDestroy(circId, DestroyReason.RESOURCELIMIT)
            return
        create = Create2.decode(payload)
        keySeed, reply = ntor.serverRespond(create.hdata, self.nodeId, self.keyRing.findKey)
        circuit = RelayCircuit(self, channel, circId, RelayLayer(keySeed))
        channel.addCircuit(circId, circuit)
        channel.peerCircuits += 1
        self.counters["circuits_created"] += 1
        channel.send(encodeCell(circId, Command.CREATED2, Created2(reply).encode()))

    # -- status

    def circuitCount(self):
        return sum(len(channel.circuits) for channel in self._channels.values())

    def status(self):
        return {"links": len(self._channels), "circuit_ends": self.circuitCount(), **self.counters}
