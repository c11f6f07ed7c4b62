"""The onion plane as a node service: the onion key ring (persisted, rotated
on schedule) and the circuit switch, ready to be given the node's links.

The roles wire it to the link manager: C{linkManager.setCellHandler(service.switch)}
(the switch is the L{meshvpn.interfaces.ICellHandler}) and C{connector=linkManagerConnector(manager)}
so EXTEND2 reaches new relays; the descriptor publishes
C{service.keyRing.publicKeys()} and is republished from C{onRotate}.
"""

import os

from twisted.application import service
from twisted.logger import Logger

from meshvpn.onion.keyring import DEFAULT_LIFETIME, DEFAULT_OVERLAP, RING_FILE, OnionKeyRing
from meshvpn.onion.switch import CircuitSwitch

log = Logger()


def linkManagerConnector(manager):
    """
    @return: a switch C{connector} that opens EXTEND2 links through an
        L{ILinkManager}; the switch hands it the target's node id and the
        C{linkAddresses} that passed its checks (L{meshvpn.onion.switch.checkExtendTarget}).
    """
    return manager.getLink


class OnionService(service.Service):
    """
    @ivar keyRing: the relay's L{OnionKeyRing} (C{None} on a client).
    @ivar switch: the node's L{CircuitSwitch}.
    @ivar onRotate: callables run after each rotation (republish the descriptor).
    """

    def __init__(self, reactor, identity, dataDir, relay=True, connector=None, edge=None,
                 lifetime=DEFAULT_LIFETIME, overlap=DEFAULT_OVERLAP, limits=None, readLimiter=None,
                 localAddresses=frozenset()):
        self.reactor = reactor
        self.lifetime = lifetime
        self.onRotate = []
        self.keyRing = None
        if relay:
            seed = bytes(identity.onionPrivateKey())
            self.keyRing = OnionKeyRing.loadOrCreate(reactor, os.path.join(dataDir, RING_FILE), seed, overlap)
        self.switch = CircuitSwitch(reactor, identity.nodeId, self.keyRing, connector, edge, limits,
                                    readLimiter=readLimiter, localAddresses=localAddresses)
        self._timer = None

    def startService(self):
        super().startService()
        if self.keyRing is not None:
            self._schedule()

    def stopService(self):
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self):
        due = self.keyRing.rotatedAt + self.lifetime - self.reactor.seconds()
        self._timer = self.reactor.callLater(max(0.0, due), self._rotate)

    def _rotate(self):
        self.keyRing.rotate()
        log.info("onion key rotated; the previous key stays valid for {overlap}s", overlap=self.keyRing.overlap)
        for callback in list(self.onRotate):
            try:
                callback(self.keyRing.publicKeys())
            except Exception:
                log.failure("onion key rotation callback failed")
        self._schedule()
