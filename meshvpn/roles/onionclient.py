"""What a client runs above its links: circuits built from DHT descriptors, and SOCKS on top.

Called from the client role's C{makeService}: an onion switch for the
client's origin circuits, a L{CircuitManager} fed by the relays the DHT's
L{RelayFinder} has verified, persistent guards, and the SOCKS server whose
streams ride those circuits.
"""

import os

import attrs
from twisted.internet import defer, task

from meshvpn.circuits.builder import CircuitBuilder
from meshvpn.streams.edge import attachStreams
from meshvpn.streams.opener import CircuitStreamOpener
from meshvpn.client.socks import socksServiceFromSettings
from meshvpn.errors import NoPath
from meshvpn.circuits.manager import CircuitManager
from meshvpn.circuits.guards import GuardSet
from meshvpn.circuits.relayinfo import relayInfo
from meshvpn.onion.service import OnionService
from meshvpn.roles.common import addService

GUARDS_FILE = "guards.json"


class DirectoryRelays:
    """
    The circuit manager's relay source: the verified, unexpired descriptors
    the finder holds.  Until it knows enough for one path (three relays, one
    an exit) it asks the directory again and waits, up to C{patience} seconds.

    C{families} are the address families the client has (4, 6): a relay it
    has no link address of those for cannot be its guard (an IPv6-only
    client enters through dual-stack or IPv6 guards; the hops after that
    are linked by relays, whatever their family).
    """

    def __init__(self, reactor, finder, patience=30.0, poll=0.25, weights=None, families=(4, 6)):
        self.families = frozenset(families)
        self.reactor = reactor
        self.finder = finder
        self.weights = weights
        self.patience = patience
        self.poll = poll

    def known(self):
        now = self.reactor.seconds()
        infos = (relayInfo(d, self.weights) for d in self.finder.relays.values() if d.expires > now)
        return [self._reachable(r) for r in infos if r is not None]

    def _reachable(self, relay):
        if "guard" not in relay.roles or any((6 if ":" in h else 4) in self.families for h in relay.hosts):
            return relay
        return attrs.evolve(relay, roles=relay.roles - {"guard"})

    def __call__(self):
        return defer.Deferred.fromCoroutine(self._wait())

    def refreshSoon(self):
        """The circuit manager found no path clear of relays it avoids: sample the directory now."""
        self.finder.refreshSoon()

    async def _wait(self):
        deadline = self.reactor.seconds() + self.patience
        refreshed = False
        while True:
            relays = self.known()
            if len(relays) >= 3 and any("exit" in r.roles for r in relays):
                return relays
            if self.reactor.seconds() >= deadline:
                raise NoPath(f"the directory gave {len(relays)} usable relays; a path needs 3 with an exit")
            if not refreshed:
                refreshed = True
                self.finder.refreshSoon()
            await task.deferLater(self.reactor, self.poll, lambda: None)


def nodeFamilies(settings):
    """The address families of the client's sockets (C{--udp}, C{--udp6}): the families it can dial."""
    hosts = [settings["udp"][0]] + ([settings["udp6"][0]] if settings.get("udp6") else [])
    return frozenset(6 if ":" in h else 4 for h in hosts)


def addOnionClient(node, settings, links, finder, payments=None, weights=None, dhtTransport=None):
    """
    The client's C{"onion"} switch on C{links} (the node's L{ILinkManager}),
    its C{"circuits"} manager fed by C{finder}, and the C{"socks"} listener
    whose streams ride those circuits.

    @param payments: a L{meshvpn.client.paying.PaymentClient} (its circuits
        pay token-gated exits), or C{None}.
    @param weights: the L{meshvpn.interfaces.IRelayWeights} paths are drawn by, or C{None} (uniform).
    @param dhtTransport: a L{meshvpn.client.dhtcircuits.CircuitDatagramTransport}
        given the same relays and guards (its short circuits enter where
        the others do), or C{None}.
    @return: the L{CircuitManager}.
    """
    onion = OnionService(node.reactor, node.identity, node.dataDir, relay=False)
    links.setCellHandler(onion.switch)
    addService(node, "onion", onion)
    guards = GuardSet(os.path.join(node.dataDir, GUARDS_FILE), node.reactor)
    relays, onCircuit = DirectoryRelays(node.reactor, finder, weights=weights, families=nodeFamilies(settings)), attachStreams
    if payments is not None:
        relays, onCircuit = payments.relaySource(relays), payments.onCircuit(onCircuit)
    circuits = CircuitManager(
        node.reactor,
        relays,
        CircuitBuilder(node.reactor, onion.switch, links, onCircuit=onCircuit),
        guards=guards,
        spares=settings["circuits_spare"],
        warmBackup=settings["warm_backup_guard"],
    )
    # a suspected guard link (PING unanswered) moves waiting streams and new circuits to the next guard
    links.addLivenessObserver(circuits)
    addService(node, "circuits", circuits)
    if dhtTransport is not None:
        known = DirectoryRelays(node.reactor, finder, weights=weights, families=nodeFamilies(settings)).known
        dhtTransport.attach(known, guards, CircuitBuilder(node.reactor, onion.switch, links))
    node.status.addSource("circuits", circuits)
    socks = socksServiceFromSettings(node.reactor, settings, CircuitStreamOpener(circuits, multipath=settings["multipath_after"], reactor=node.reactor))
    node.addListener("socks", socks)
    node.status.addSource("socks", socks)
    return circuits
