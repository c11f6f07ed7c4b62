"""A relay's payout address in the DHT: published by the relay, read by whoever pays or checks a payout.

The address is an owned record (only the relay's identity key can write it)
under L{meshvpn.payments.payouts.addressKey}, republished periodically so it
never expires while the relay runs.  A reader keeps it only if the record
was published by the relay it asked about and the value is a Monero
address in form (L{meshvpn.payments.payouts.parseAddress}); anything else
reads as "no address" and is counted.
"""

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.dht.records import makeRecord
from meshvpn.interfaces import IStatusSource
from meshvpn.payments.payouts import ADDRESS_SALT, PayoutError, addressKey, parseAddress


@implementer(IStatusSource)
class PayoutAddressPublisher(service.Service):
    """
    @param dht: a callable returning the L{meshvpn.interfaces.IDHT}.
    @param address: the relay's Monero payout address (checked here).
    @param interval: seconds between republications; a record lives three.
    """

    log = Logger()

    def __init__(self, clock, identity, dht, address, interval=3600.0):
        parseAddress(address.encode("ascii", "replace"))
        self.clock = clock
        self.identity = identity
        self.dht = dht
        self.address = address
        self.interval = interval
        self.published = None  # when the last put succeeded
        self.failures = 0
        self._loop = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def _tick(self):
        self.publish().addErrback(lambda f: self.log.failure("publishing the payout address failed", f))

    @defer.inlineCallbacks
    def publish(self):
        now = self.clock.seconds()
        record = makeRecord(self.identity, ADDRESS_SALT, self.address.encode("ascii"), int(now),
                            int(now + 3 * self.interval))
        try:
            yield self.dht().put(record)
        except Exception as e:
            self.failures += 1
            self.log.warn("payout address not stored: {why}", why=str(e)[:200])
            return False
        self.published = now
        return True

    def status(self):
        return {"address": self.address, "published": self.published, "failures": self.failures}


class PayoutAddressBook:
    """
    Reads relays' payout addresses from the DHT.

    @param dht: a callable returning the L{meshvpn.interfaces.IDHT}.
    """

    def __init__(self, dht):
        self.dht = dht
        self.rejected = 0

    @defer.inlineCallbacks
    def addressOf(self, nodeId):
        """@return: Deferred firing with the relay's address (C{str}) or C{None}."""
        try:
            record = yield self.dht().get(addressKey(nodeId))
        except Exception:
            return None
        if record is None:
            return None
        if record.publisherId != nodeId or record.salt != ADDRESS_SALT:
            self.rejected += 1
            return None
        try:
            return parseAddress(record.value)
        except PayoutError:
            self.rejected += 1
            return None
