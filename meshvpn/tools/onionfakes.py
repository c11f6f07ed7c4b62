"""In-memory links and relays for onion-plane tests and the circuit benchmark.

A L{MemoryLink} is an L{ILink} whose cells are queued in a L{MemoryNetwork}
and delivered when the test calls L{MemoryNetwork.pump}, so no reactor, no
sockets and no real time are involved.  The network shares the nodes'
C{task.Clock}: pumping also runs the calls due now, which is how the
channels' end-of-turn writes happen.  Links also play the producer and
consumer roles real links play, so backpressure can be tested.
"""

import hashlib
from collections import deque

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from meshvpn.errors import LinkError
from meshvpn.interfaces import ILink
from meshvpn.onion.keyring import OnionKeyRing
from meshvpn.onion.origin import HopSpec
from meshvpn.onion.switch import CircuitSwitch, SwitchLimits


@implementer(ILink, IConsumer, IPushProducer)
class MemoryLink:
    """
    One end of an in-memory link.  C{tap(cells)} sees every batch this end
    sends; C{batchesSent} counts them (one per C{sendCells} call, what a TLS
    link turns into one write).
    """

    def __init__(self, network, localId, peerId, isInitiator):
        self.network = network
        self.isInitiator = isInitiator
        self.users = 0
        self.localId = localId
        self.peerId = peerId
        self.peer = None
        self.tap = None
        self.discard = False      # benchmark sink: count and drop what is sent
        self.cellsSent = 0
        self.batchesSent = 0
        self.inbox = deque()
        self.readPaused = False
        self.producer = None
        self.closedReason = None
        self._receiver = None
        self._closeWaiters = []

    # ILink
    def sendCells(self, cells):
        if self.closedReason is not None:
            return
        self.cellsSent += len(cells)
        self.batchesSent += 1
        if self.tap is not None:
            self.tap(cells)
        if self.discard:
            return
        self.peer.inbox.append(list(cells))
        self.network.ready.append(self.peer)

    def setCellReceiver(self, receiver):
        self._receiver = receiver

    def close(self, reason="closed"):
        if self.closedReason is not None:
            return
        self.closedReason = reason
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(reason)
        self.peer.close(reason)

    def whenClosed(self):
        d = defer.Deferred()
        if self.closedReason is not None:
            d.callback(self.closedReason)
        else:
            self._closeWaiters.append(d)
        return d

    def acquire(self):
        self.users += 1

    def release(self):
        self.users -= 1

    # IPushProducer: the switch pauses our delivery when its queues are full
    def pauseProducing(self):
        self.readPaused = True

    def resumeProducing(self):
        self.readPaused = False
        self.network.ready.append(self)

    def stopProducing(self):
        pass

    # IConsumer: whoever writes to us registers here
    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def blockWrites(self):
        """Behave like a full socket buffer: pause whoever writes to us."""
        if self.producer is not None:
            self.producer.pauseProducing()

    def unblockWrites(self):
        if self.producer is not None:
            self.producer.resumeProducing()

    def deliver(self):
        while self.inbox and not self.readPaused and self._receiver is not None and self.closedReason is None:
            self._receiver(self.inbox.popleft())


class MemoryNetwork:
    """
    Holds the queues of every L{MemoryLink}; L{pump} delivers until quiet.

    @param clock: the C{task.Clock} the nodes on this network use.
    """

    def __init__(self, clock):
        self.clock = clock
        self.ready = deque()

    def connect(self, idA, idB, anonymous=False):
        """
        @param anonymous: A is a client that does not prove an identity: B
            sees C{peerId = None}, as real links from clients do.
        @return: C{(a, b)}: the end at A (peer B) and the end at B (peer A).
        """
        a = MemoryLink(self, idA, idB, True)
        b = MemoryLink(self, idB, None if anonymous else idA, False)
        a.peer, b.peer = b, a
        return a, b

    def pump(self, maxSteps=1000000):
        """Deliver cells and run the calls due now until neither is left."""
        steps = 0
        while steps < maxSteps:
            if self.ready:
                self.ready.popleft().deliver()
            elif not self.endTurn():
                break
            steps += 1
        return steps

    def endTurn(self):
        """Run the calls due now (what ends a reactor turn). @return: whether there were any."""
        now = self.clock.seconds()
        if not any(call.getTime() <= now for call in self.clock.getDelayedCalls()):
            return False
        self.clock.advance(0)
        return True


class TestRelay:
    """A relay's onion plane: node id, onion keys and a switch; links made on demand."""

    def __init__(self, network, clock, name, edge=None, limits=None, directory=None):
        self.name = name
        self.nodeId = hashlib.sha256(name.encode()).digest()
        self.keyRing = OnionKeyRing(clock)
        self.network = network
        self.directory = directory if directory is not None else {}
        self.directory[self.nodeId] = self
        # Every fake relay is at 127.0.0.1 (hopSpec): extending between them needs the test-network opt-in.
        if limits is None:
            limits = SwitchLimits(extendAllowPrivate=True)
        self.switch = CircuitSwitch(
            clock, self.nodeId, self.keyRing, connector=self._connect, edge=edge, limits=limits
        )

    def hopSpec(self, handshakes=None):
        """What a client knows of this relay; C{handshakes}: as its descriptor would list (default: what it speaks)."""
        if handshakes is None:
            handshakes = self.switch.advertisedHandshakes()
        return HopSpec(self.nodeId, self.keyRing.publicKeys()["current"], (("127.0.0.1", 9001),),
                       ("tls 127.0.0.1:9001",), tuple(handshakes))

    def _connect(self, ext):
        other = self.directory.get(ext.nodeId)
        if other is None:
            return defer.fail(LinkError("unknown relay"))
        mine, theirs = self.network.connect(self.nodeId, other.nodeId)
        other.switch.attachLink(theirs)
        return defer.succeed(mine)

    def linkTo(self, otherNodeId, anonymous=False):
        """For a client: a fresh link from a node called C{self} to C{otherNodeId}."""
        other = self.directory[otherNodeId]
        mine, theirs = self.network.connect(self.nodeId, other.nodeId, anonymous)
        other.switch.attachLink(theirs)
        return mine
