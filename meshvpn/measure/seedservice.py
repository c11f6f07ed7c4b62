"""Carries the probe plan's seed through the DHT: a relay's commit and reveal, and every node's reading of them.

A probing relay, at each epoch's start, publishes its seed record
(L{meshvpn.measure.probeseed}): the secret of the new epoch, the
commitment to the next one's and the seed its plan of the epoch before
used.  The window W is one epoch: the commitment is stored at the start
of the epoch before and read by 20% of it, before anyone reveals a secret
of the epoch it is for, the smallest W for which a relay's commitment
cannot depend on the others' secrets (a longer one only delays a new
relay's first plan).  At L{READ_AT} of each epoch, before the slot can
open (L{meshvpn.measure.probeplan.SLOT_FROM}), it reads the record of
every relay its probe directory holds (and at L{READ_REVEALS_AGAIN_AT}
those it did not find); its L{SeedBook} says which commitments and
reveals count (read in time), and the plan of the epoch
(L{meshvpn.measure.probeservice.PlanCache}) draws from them.

A client reads the same records when it computes an epoch's weights
(L{read}, from L{meshvpn.measure.service.MeasuredWeights}): the record of
the epoch just started gives it the commitments of the next one in time,
and that of the epoch after an epoch gives it the seed the relays' plans
used, which it follows when more than half of the candidates agree.
"""

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from meshvpn.dht.records import makeRecord, ownedKey
from meshvpn.interfaces import IProbeSeeds, IStatusSource
from meshvpn.measure.epoch import epochOf
from meshvpn.measure.probeplan import SLOT_FROM, commitmentOf
from meshvpn.measure.probeseed import SeedRecordError, parseSeedRecord, seedSalt, signSeedRecord
from meshvpn.measure.seedbook import SeedBook
from meshvpn.measure.window import SLOTS

READ_AT = 0.1  # fraction of the epoch at which a relay reads the epoch's seed records
READ_REVEALS_AGAIN_AT = 0.15  # ... again those it did not find, still before REVEAL_BY (a slow store)
REVEAL_BY = SLOT_FROM  # a reveal read later than this fraction of its epoch does not count for a relay


@implementer(IProbeSeeds, IStatusSource)
class SeedService(service.Service):
    """
    @param dht: a callable returning the L{meshvpn.interfaces.IDHT}.
    @param directory: a callable returning C{{nodeId: descriptor}} of the
        relays whose records to read each epoch, or C{None} (a client:
        it calls L{read} itself).
    @param identity: the relay's identity, to publish its own record;
        C{None}: read only.
    @param secrets: a L{meshvpn.measure.probesecrets.ProbeSecrets} (with identity).
    """

    log = Logger()

    def __init__(self, clock, dht, epochLength, directory=None, identity=None, secrets=None, concurrency=8,
                 joined=None):
        """@param joined: a Deferred that fires once the DHT is joined (the first record waits for it), or C{None}."""
        self.joined = joined
        self.clock = clock
        self.dht = dht
        self.epochLength = epochLength
        self.directory = directory
        self.identity = identity
        self.secrets = secrets
        relay = identity is not None
        self.book = SeedBook(epochLength, lateUntil=epochOf(clock.seconds(), epochLength),
                             revealBy=REVEAL_BY if relay else None, commitBy=REVEAL_BY if relay else 1.0)
        self._limit = defer.DeferredSemaphore(concurrency)
        self._read = {}  # epoch -> node ids whose record of it was asked for (each once)
        self._found = {}  # epoch -> node ids whose record of it was found
        self.rejected = 0
        self.published = None  # the epoch of the last record stored
        self._calls = []

    # IProbeSeeds
    def planInputs(self, epoch, attested=False):
        return self.book.planInputs(epoch, attested)

    @defer.inlineCallbacks
    def read(self, epoch, nodeIds, retry=False):
        """
        Read the seed record of C{epoch} of each of C{nodeIds} into the book,
        each once (with C{retry}: again for those whose record was not found).
        @return: Deferred.
        """
        asked = self._read.setdefault(epoch, set())
        found = self._found.setdefault(epoch, set())
        todo = sorted(set(nodeIds) - (found if retry else asked))
        asked.update(todo)
        for old in [e for e in self._read if e < epoch - SLOTS]:
            del self._read[old]
            self._found.pop(old, None)
        yield defer.gatherResults([self._fetch(n, epoch).addErrback(lambda f: None) for n in todo])

    def _fetch(self, nodeId, epoch):
        d = self._limit.run(self.dht().get, ownedKey(nodeId, seedSalt(epoch)))
        return d.addCallback(self._check, nodeId, epoch)

    def _check(self, record, nodeId, epoch):
        if record is None:
            return
        try:
            got = parseSeedRecord(record.value)
        except SeedRecordError:
            self.rejected += 1
            return
        if record.publisherKey != got.identityKey or got.publisher != nodeId or got.epochLength != self.epochLength:
            self.rejected += 1
            return
        if got.epoch != epoch:
            return  # an older epoch's record still in the slot: a replay counts for nothing
        self._found.setdefault(epoch, set()).add(nodeId)
        self.book.add(got, self.clock.seconds())

    # a relay's loop
    def startService(self):
        super().startService()
        if self.identity is None:
            return
        if self.joined is None:
            self._begin()
        else:
            self.joined.addCallback(self._begin)

    def _begin(self, passThrough=None):
        if self.running and not self._calls:
            epoch = epochOf(self.clock.seconds(), self.epochLength)
            # The records of the epoch before are taken as found (the others read them in time, and
            # found what this relay finds now); this epoch's, read late, count for nothing: else a
            # relay that started after the others read them would count commitments they did not
            # (its own first of all) and draw the next plan from another seed.  Started together,
            # late, all draw the next epoch from the epoch alone, and agree.
            self.book.lateUntil = epoch - 1
            self._publishAndRead(epoch, readPrevious=True)
            self._at((epoch + 1) * self.epochLength, self._boundary, epoch + 1)
        return passThrough  # others wait on the same Deferred

    def stopService(self):
        super().stopService()
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []

    def _at(self, when, f, *args):
        self._calls = [c for c in self._calls if c.active()]
        self._calls.append(self.clock.callLater(max(0.0, when - self.clock.seconds()), f, *args))

    def _boundary(self, epoch):
        self._at((epoch + 1) * self.epochLength, self._boundary, epoch + 1)
        self._publishAndRead(epoch)

    def _publishAndRead(self, epoch, readPrevious=False):
        d = self.publish(epoch)
        d.addErrback(lambda f: self.log.failure("seed record of epoch {e} failed", f, e=epoch))
        start = epoch * self.epochLength
        if readPrevious:
            # started mid-way: the commitments of this epoch are in the record of the one before
            self._loop(self.read(epoch - 1, self._relays()), epoch - 1)
        now = self.clock.seconds()
        self._at(max(start + READ_AT * self.epochLength, now),
                 lambda: self._loop(self.read(epoch, self._relays()), epoch))
        self._at(max(start + READ_REVEALS_AGAIN_AT * self.epochLength, now),
                 lambda: self._loop(self.read(epoch, self._relays(), retry=True), epoch))

    def _loop(self, d, epoch):
        d.addErrback(lambda f: self.log.failure("reading the seed records of epoch {e} failed", f, e=epoch))

    def _relays(self):
        relays = set(self.directory()) if self.directory is not None else set()
        relays.add(self.identity.nodeId)
        return relays

    @defer.inlineCallbacks
    def publish(self, epoch):
        """Store this relay's record of C{epoch}: its secret of C{epoch}, its commitment for the next."""
        me = self.identity.nodeId
        secret = self.secrets.secretOf(epoch)
        commitment = commitmentOf(me, epoch + 1, self.secrets.secretOf(epoch + 1))  # saved before it goes out
        used = b""
        if epoch >= 1 and self.book.committed(epoch - 1) is not None:
            used = self.book.seedOf(epoch - 1)
        record = signSeedRecord(self.identity, epoch, self.epochLength, secret, commitment, used)
        expires = (epoch + SLOTS) * self.epochLength
        try:
            yield self.dht().put(makeRecord(self.identity, seedSalt(epoch), record.raw, epoch, expires))
        except Exception as e:
            self.log.warn("seed record of epoch {e} not stored: {why}", e=epoch, why=e)
            return
        # (its own is read back from the DHT with the others', not added here: known when they know it,
        # a slow store counts for it as for them)
        self.published = epoch

    def status(self):
        out = dict(self.book.counters)
        out["rejected"] = self.rejected
        if self.published is not None:
            out["last_published"] = self.published
        # the epoch's plan inputs: how many candidates, whether a seed (its bytes are public, but not needed here)
        epoch = epochOf(self.clock.seconds(), self.epochLength)
        seed, candidates = self.book.planInputs(epoch)
        out.update(epoch=epoch, candidates=0 if candidates is None else len(candidates), seeded=bool(seed),
                   reveals=len(self.book.reveals.get(epoch, {})))
        # which plan each recent epoch drew (a seed's first bytes, "" for the epoch alone): to compare nodes
        out["plans"] = {str(e): self.book.planInputs(e)[0].hex()[:8] for e in range(epoch - 3, epoch + 1)}
        return out
