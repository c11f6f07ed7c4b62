"""SENDME flow control with authenticated acknowledgements (doc/protocol.md).

A sender may have at most C{start} flow-controlled cells unacknowledged.  The
receiver acknowledges every C{increment} cells with a SENDME that carries the
8-byte tag of the last cell it acknowledges; the sender remembers the tag of
every C{increment}-th cell it sent and refuses a SENDME whose tag differs.  A
tag is only known to the hop that removed every layer of that cell, so a
SENDME proves the data arrived (Tor's authenticated SENDMEs, proposal 289,
with our 8-byte tag instead of a 20-byte digest).
"""

import hmac
from collections import deque

from meshvpn.errors import MeshVPNError

CIRCUIT_WINDOW = 1000
CIRCUIT_INCREMENT = 100
STREAM_WINDOW = 500
STREAM_INCREMENT = 50


class FlowError(MeshVPNError):
    """A peer broke flow control: a forged or unexpected SENDME, or it overran our window."""


class SendWindow:
    """The packaging side: how many more cells we may send."""

    __slots__ = ("window", "start", "increment", "_sent", "_expected")

    def __init__(self, start=CIRCUIT_WINDOW, increment=CIRCUIT_INCREMENT):
        self.window = self.start = start
        self.increment = increment
        self._sent = 0
        self._expected = deque()  # bounded: at most start // increment tags

    def onSent(self, tag):
        """Account one sent cell whose tag is C{tag}; the caller checked L{window}."""
        if self.window <= 0:
            raise FlowError("sent past the window")
        self.window -= 1
        self._sent += 1
        if self._sent % self.increment == 0:
            self._expected.append(tag)

    def onSendme(self, tag):
        """
        @raise FlowError: the SENDME was not expected or acknowledges a cell we did not send.
        """
        if not self._expected:
            raise FlowError("SENDME for a window that is not open")
        if not hmac.compare_digest(self._expected.popleft(), tag):
            raise FlowError("SENDME tag does not match the acknowledged cell (forged or unauthenticated)")
        self.window += self.increment


class ReceiveWindow:
    """The delivering side: counts cells and says when to send a SENDME."""

    __slots__ = ("window", "increment", "_received")

    def __init__(self, start=CIRCUIT_WINDOW, increment=CIRCUIT_INCREMENT):
        self.window = start
        self.increment = increment
        self._received = 0

    def onReceived(self, tag):
        """
        @return: the tag to acknowledge in a SENDME now, or C{None}.
        @raise FlowError: the peer sent more than the window allowed.
        """
        self.window -= 1
        if self.window < 0:
            raise FlowError("peer overran the flow-control window")
        self._received += 1
        if self._received % self.increment == 0:
            self.window += self.increment
            return tag
        return None
