"""TLS for links that sends in the turn it is written, and says when a read is over.

A relayed cell used to wait three reactor turns in a relay before its
bytes reached the kernel: the channel's end-of-turn write (a
C{callLater(0)}, L{meshvpn.onion.flusher}), then Twisted's TLS write
aggregator (another C{callLater(0)}), then the TCP transport, which only
sends once the reactor has seen the socket writable.  Each turn is a pass
of the reactor (its timers, an C{epoll_wait}) and, under a bulk transfer on
another link, the whole of that transfer's next read: a small cell waited
behind up to three of them in every process it crossed.

Channels already write one batch per link per read, so the aggregator has
nothing left to join: L{LinkTLSProtocol} encrypts each write at once and
hands the TCP transport's buffer to the kernel right away
(L{meshvpn.socketpush.pushNow}: the transport keeps whatever the kernel
does not take and sends it when writable, as before; a closing socket, a
paused producer and a link over a wrapped transport are left to the
reactor).  It also tells its link when a TCP read has been delivered
(C{readDone}), so the cells that read made for other links leave in the
same turn rather than the next
(L{meshvpn.onion.flusher.ChannelFlusher.readDone}).
"""

from twisted.protocols.tls import TLSMemoryBIOProtocol

from meshvpn.socketpush import pushNow


class LinkTLSProtocol(TLSMemoryBIOProtocol):
    """TLS under a link: writes leave in the same turn; the link hears when a read is over."""

    def dataReceived(self, data):
        TLSMemoryBIOProtocol.dataReceived(self, data)
        readDone = getattr(self.wrappedProtocol, "readDone", None)
        if readDone is not None:
            readDone()

    def write(self, data):
        TLSMemoryBIOProtocol.write(self, data)
        pushNow(self.transport)
