"""This host's own addresses, and the address ranges no peer may make a node dial.

A relay must never be a way into the machine it runs on or the network
behind it: an exit must refuse streams and packets to every address of
every local interface (Tor's C{ExitPolicyRejectLocalInterfaces}), and an
EXTEND2 must not make a relay dial loopback, private or its own addresses.
With the default C{--udp 0.0.0.0:PORT} the node does not know those
addresses from its settings, so L{LocalAddresses} asks the kernel (netlink,
through pyroute2) for the addresses of every interface, IPv4 and IPv6, adds
the public address learned by STUN (behind a NAT it is on no interface),
and refreshes the set on a timer and whenever the learned address changes.
"""

import ipaddress

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

REFRESH_INTERVAL = 60.0

# Tor's tor_addr_is_internal set (as its 'private' policy keyword lists it),
# plus multicast and reserved space: never a relay or exit target.
INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
        "::/8", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)
_INTERNAL4 = tuple(n for n in INTERNAL_NETWORKS if n.version == 4)
_INTERNAL6 = tuple(n for n in INTERNAL_NETWORKS if n.version == 6)


def normalize(address):
    """
    @return: the L{ipaddress} object for C{address} (a string or an address
        object), IPv4-mapped IPv6 turned into IPv4.
    @raise ValueError: not an IP address.
    """
    ip = address if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def isInternal(address):
    """@return: whether C{address} is loopback, private, link-local, shared, multicast or reserved."""
    ip = normalize(address)
    return any(ip in n for n in (_INTERNAL4 if ip.version == 4 else _INTERNAL6))


def interfaceAddresses():
    """
    @return: every address of every interface of this host (strings), from
        the kernel's netlink address table.
    """
    from pyroute2 import IPRoute

    found = []
    with IPRoute() as ipr:
        for message in ipr.get_addr():
            for attr in ("IFA_LOCAL", "IFA_ADDRESS"):  # on point-to-point links LOCAL is ours
                value = message.get_attr(attr)
                if value:
                    found.append(value)
    return found


class LocalAddresses(service.Service):
    """
    The live set of this host's addresses: a container of L{ipaddress}
    objects (C{ip in addresses}, iteration), refreshed every C{interval}
    seconds while running.

    @param enumerate: C{callable() -> [address]}, the interfaces' addresses
        (tests pass a fake).
    @param configured: addresses from the settings (a specific C{--udp} host).
    @ivar onChange: callables run with the new set after it changed.
    """

    log = Logger()

    def __init__(self, reactor, enumerate=interfaceAddresses, interval=REFRESH_INTERVAL, configured=()):
        self.reactor = reactor
        self._enumerate = enumerate
        self.interval = interval
        self._configured = frozenset(self._parse(configured))
        self._learned = frozenset()
        self._interfaces = frozenset()
        self._all = self._configured
        self._loop = None
        self.onChange = []
        self.refreshes = 0
        self.refresh()  # right at once: an exit's policy must hold before the node starts

    @staticmethod
    def _parse(addresses):
        out = set()
        for a in addresses:
            try:
                ip = normalize(a.split("%", 1)[0] if isinstance(a, str) else a)
            except ValueError:
                continue
            if not ip.is_unspecified:
                out.add(ip)
        return out

    def refresh(self):
        """Read the interfaces' addresses again (a failure keeps the last set)."""
        try:
            self._interfaces = frozenset(self._parse(self._enumerate()))
        except Exception:
            self.log.failure("could not list this host's interface addresses; keeping the last list")
        self.refreshes += 1
        self._update()

    def learn(self, addresses):
        """
        The public addresses others see this node at (STUN's mapped
        address): rejected like the interfaces' own; a change also
        refreshes the interfaces (a new address usually means a new network).
        """
        learned = frozenset(self._parse(addresses))
        if learned != self._learned:
            self._learned = learned
            self.refresh()

    def _update(self):
        new = self._configured | self._interfaces | self._learned
        if new != self._all:
            self._all = new
            for callback in list(self.onChange):
                callback(new)

    def __contains__(self, address):
        try:
            return normalize(address) in self._all
        except (ValueError, TypeError):
            return False

    def __iter__(self):
        return iter(sorted(self._all, key=lambda ip: (ip.version, ip)))

    def __len__(self):
        return len(self._all)

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
