"""Join two L{IStream}s so that what one receives the other sends, with backpressure both ways.

The exit splices each circuit stream (L{meshvpn.streams.circuitstream}) to
the TCP connection it made for it (an L{IStream} too); each is registered
as the producer feeding the other, so a full window on one side pauses
reading on the other.  A half-close crosses as a half-close, a clean end
(DONE) as a half-close too (each side then ends once its buffer is out),
any other end as an end with its reason.
"""

from zope.interface import implementer

from meshvpn.interfaces import IStreamReceiver
from meshvpn.onion.endreasons import EndReason


@implementer(IStreamReceiver)
class _Forward:
    def __init__(self, to):
        self.to = to

    def streamDataReceived(self, data):
        self.to.write(data)

    def streamReadEnded(self):
        self.to.halfClose()

    def streamEnded(self, reason):
        self.to.unregisterProducer()
        if reason == EndReason.DONE:
            # A clean end: everything arrived and was handed over.  The other
            # side finishes after what it still buffers, rather than drop it.
            self.to.halfClose()
        else:
            self.to.close(reason)


def splice(a, b):
    """Join streams C{a} and C{b}."""
    a.registerProducer(b, True)
    b.registerProducer(a, True)
    a.setReceiver(_Forward(b))
    b.setReceiver(_Forward(a))
