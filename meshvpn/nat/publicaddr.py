"""The node's public address as others see it: a STUN Binding now and then.

Behind a NAT (or a 1:1 cloud NAT) a relay's public address is on none of
its interfaces, yet an exit must refuse streams to it (they would hairpin
into the host) and an EXTEND2 must not dial it.  This asks the STUN servers
it is given (the relay's bootstrap nodes, which answer STUN on their DHT
socket) every C{interval} seconds and hands the mapped address to
C{onAddress}, e.g. L{meshvpn.localaddrs.LocalAddresses.learn}, which
refreshes the host's address set when it changed.

A lying server can only add an address to what the node refuses, or hide
one that is not on an interface; the interfaces' own are read from the
kernel regardless.
"""

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from meshvpn.nat import stun
from meshvpn.nat.transaction import StunTimeout

PROBE_INTERVAL = 300.0


class PublicAddressProbe(service.Service):
    """
    @param client: the node's L{meshvpn.nat.transaction.StunClient}.
    @param servers: C{[(host, port)]} to ask, in order, until one answers.
    @param onAddress: C{callable([host])} with the mapped address.
    """

    log = Logger()

    def __init__(self, reactor, client, servers, onAddress, interval=PROBE_INTERVAL):
        self.reactor = reactor
        self.client = client
        self.servers = list(servers)
        self.onAddress = onAddress
        self.interval = interval
        self.address = None
        self._loop = None
        self._asking = None  # the request in flight: cancelled on stop (it has retransmission timers)

    def startService(self):
        super().startService()
        if self.servers:
            self._loop = task.LoopingCall(self.probe)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._asking is not None:
            self._asking.cancel()

    def probe(self):
        """@return: a Deferred firing with the mapped host, or C{None} if no server answered."""
        return defer.Deferred.fromCoroutine(self._probe())

    async def _probe(self):
        for server in self.servers:
            request = stun.StunMessage(stun.BINDING, stun.REQUEST)
            self._asking = self.client.request(request, tuple(server))
            try:
                result = await self._asking
            except defer.CancelledError:
                return None  # stopped
            except StunTimeout:
                continue
            except Exception as e:
                self.log.info("STUN probe of {server} failed: {e}", server=server, e=e)
                continue
            finally:
                self._asking = None
            if result.message.cls != stun.SUCCESS:
                continue
            try:
                mapped = result.message.getXorAddress() or result.message.getAddress(stun.MAPPED_ADDRESS)
            except stun.StunParseError:
                continue
            if mapped is None:
                continue
            host = mapped[0]
            if host != self.address:
                self.log.info("public address seen by STUN: {host}", host=host)
                self.address = host
            self.onAddress([host])
            return host
        return None
