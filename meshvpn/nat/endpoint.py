"""Everything STUN-shaped that arrives on one UDP socket goes through here.

The node's socket carries STUN for several users at once: our own client
transactions (NAT probing, the TURN client), the STUN server (Binding), the
TURN server (Allocate, Refresh, ...).  A L{StunEndpoint} decodes each STUN
datagram once and routes it: responses to the L{StunClient} by transaction
id, requests and indications to the handler registered for their method.
Malformed datagrams are counted and dropped; nothing here raises into the
multiplexer for a bad packet.
"""

from collections import Counter

from zope.interface import implementer

from meshvpn.interfaces import IDatagramHandler, IStunEndpoint
from meshvpn.nat import stun
from meshvpn.nat.transaction import StunClient
from meshvpn.udpmux import STUN_BYTES


@implementer(IDatagramHandler, IStunEndpoint)
class StunEndpoint:
    """
    STUN on one socket.

    @param reactor: an L{IReactorTime}.
    @param send: C{callable(data, addr)}.
    @ivar client: the L{StunClient} for requests sent from this socket.
    """

    def __init__(self, reactor, send):
        self.reactor = reactor
        self.send = send
        self.client = StunClient(reactor, send)
        self._methods = {}
        self._watchers = {}
        self.counters = Counter()

    @classmethod
    def onSocket(cls, reactor, mux):
        """
        A new endpoint for the socket behind C{mux} (an
        L{IDatagramMultiplexer}), registered there for STUN's first bytes.
        One per socket: a role makes the node's and hands it to every
        service that speaks STUN on it (STUN server, TURN client, probes).
        """
        ep = cls(reactor, mux.sendDatagram)
        mux.register("stun", STUN_BYTES, ep, accept=stun.isStun)
        return ep

    def setMethodHandler(self, method, handler):
        """
        Route requests and indications of C{method} to
        C{handler(message, source)}; the handler answers with L{send}.
        """
        if method in self._methods:
            raise ValueError(f"STUN method {method:#x} already has a handler")
        self._methods[method] = handler

    def removeMethodHandler(self, method):
        self._methods.pop(method, None)

    def watchTransaction(self, transactionId, callback):
        """
        Deliver a request with C{transactionId} arriving here to
        C{callback(message, source)} instead of its method handler (used to
        detect our own hairpinned probe).  Remove with L{unwatchTransaction}.
        """
        self._watchers[transactionId] = callback

    def unwatchTransaction(self, transactionId):
        self._watchers.pop(transactionId, None)

    def datagramReceived(self, data, addr):
        try:
            msg = stun.StunMessage.decode(data)
        except stun.StunParseError:
            self.counters["malformed"] += 1
            return
        if msg.cls in (stun.SUCCESS, stun.ERROR):
            if not self.client.responseReceived(msg, addr):
                self.counters["unmatched_response"] += 1
            return
        watcher = self._watchers.get(msg.transactionId)
        if watcher is not None:
            watcher(msg, addr)
            return
        handler = self._methods.get(msg.method)
        if handler is None:
            self.counters["no_handler"] += 1
            return
        handler(msg, addr)
