"""Optimistic data: what an application sends before its stream is CONNECTED leaves at once.

An application that sends its request right after its SOCKS CONNECT (a
browser does) would otherwise wait a whole circuit round trip for CONNECTED
before the request even leaves: on loopback that round trip is most of the
time to first byte.  On a circuit that negotiated
L{meshvpn.onion.flow.FLOW_EARLY} the request follows BEGIN at once, the exit
holds it until its connection is made (Tor's optimistic data, proposal 181),
and the reply starts one round trip sooner.

L{OptimisticData} keeps the bytes until the stream is open: the opener may
try several circuits (a circuit that died, an exit that did not answer),
and each attempt gets every byte again from the start.  At most
L{meshvpn.onion.flow.EARLY_DATA_LIMIT} bytes go optimistically on one
attempt; whatever is beyond waits for CONNECTED (L{unsent}).
"""

from meshvpn.onion.flow import EARLY_DATA_LIMIT


class OptimisticData:
    """
    The bytes one application sent before its stream opened.

    @ivar size: bytes held.
    @ivar stream: the stream of the current attempt when it takes optimistic
        data, else C{None}.
    """

    __slots__ = ("chunks", "size", "limit", "stream", "_sent")

    def __init__(self, limit=EARLY_DATA_LIMIT):
        self.chunks = []
        self.size = 0
        self.limit = limit
        self.stream = None
        self._sent = 0  # bytes given to the current attempt's stream

    def write(self, data):
        """The application sent C{data} before its stream opened."""
        self.chunks.append(data)
        self.size += len(data)
        if self.stream is not None:
            self._send(data)

    def attach(self, stream):
        """
        A new attempt: BEGIN just went out on C{stream}, which takes
        optimistic data (or C{None}: this attempt does not).  Everything
        held goes to it, as far as the limit allows.
        """
        self.stream = stream
        self._sent = 0
        if stream is not None:
            for chunk in self.chunks:
                if not self._send(chunk):
                    break

    def _send(self, data):
        room = self.limit - self._sent
        if room <= 0:
            return False
        piece = data if len(data) <= room else data[:room]
        self._sent += len(piece)
        self.stream.write(piece)
        return len(piece) == len(data)

    def unsent(self):
        """
        The stream opened (on the last attempt): the bytes it was not given
        yet, in order, for the caller to write.  The holder is empty after.
        """
        sent = self._sent if self.stream is not None else 0
        out = []
        for chunk in self.chunks:
            if sent >= len(chunk):
                sent -= len(chunk)
                continue
            out.append(chunk[sent:])
            sent = 0
        self.chunks, self.size, self.stream, self._sent = [], 0, None, 0
        return out

    def clear(self):
        """The application went away: nothing is kept or sent any more."""
        self.chunks, self.size, self.stream, self._sent = [], 0, None, 0
