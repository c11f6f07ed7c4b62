"""Checking a token where it is spent: the accepted issuers' keys from the DHT, then one offline check.

Why offline: an exit must decide on a token while the circuit waits, without
asking the issuer (who would then learn when and where each token is
spent, and would become a single point of failure).  Everything a check
needs is public and signed: the issuers' info and per-epoch keys, fetched
from the DHT as records of the issuer's own node (L{meshvpn.payments.records}).

L{IssuerKeyCache} keeps, for each accepted issuer, the keys of the epochs
whose tokens are spendable now and of the next epoch (fetched ahead so a
rotation does not refuse good tokens), refreshed every C{interval} seconds
and, at most every C{minGap} seconds, when a token names an unknown key.
L{TokenVerifier} runs the checks in order: known key, epoch window, the
issuer's challenge, the RSA-PSS signature, then the spent-token store.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshvpn.interfaces import IIssuerKeys
from meshvpn.payments import paymsg, tokens
from meshvpn.payments.blindrsa import BlindSignatureError
from meshvpn.payments.records import KnownKey


@implementer(IIssuerKeys)
class IssuerKeyCache:
    """
    @param records: a L{meshvpn.payments.records.PaymentRecords} to read with.
    @param issuers: the accepted issuers' node ids.
    """

    log = Logger()

    def __init__(self, reactor, records, issuers, interval=300.0, minGap=30.0):
        self.reactor = reactor
        self.records = records
        self.issuers = list(issuers)
        self.interval = interval
        self.minGap = minGap
        self.keys = {}  # token key id -> KnownKey
        self.infos = {}  # issuer id -> IssuerInfo
        self._lastRefresh = None
        self._refreshing = None

    def lookup(self, tokenKeyId):
        return self.keys.get(tokenKeyId)

    def unknownKeySeen(self):
        """A token named a key we lack: refresh soon (at most every C{minGap} seconds)."""
        now = self.reactor.seconds()
        if self._lastRefresh is None or now - self._lastRefresh >= self.minGap:
            self.refresh()

    def complete(self):
        """Whether every accepted issuer's info was read (else refresh again soon)."""
        return all(i in self.infos for i in self.issuers)

    def apiOf(self, issuerId):
        info = self.infos.get(issuerId)
        return info.api if info is not None else None

    def refresh(self):
        """Fetch every accepted issuer's info and live keys. @return: a Deferred (never fails)."""
        if self._refreshing is not None:
            return self._refreshing
        self._lastRefresh = self.reactor.seconds()
        d = self._refreshing = defer.Deferred.fromCoroutine(self._refresh())

        def done(result):
            self._refreshing = None
            if isinstance(result, Failure):
                self.log.warn("payments: reading issuer keys failed: {why}", why=result.getErrorMessage())
            return None

        return d.addBoth(done)

    async def _refresh(self):
        now = self.reactor.seconds()
        keys, read = {}, set()
        for issuerId in self.issuers:
            info = await self.records.fetchIssuer(issuerId)
            if info is None:
                self.log.warn("payments: issuer {id} has no info in the DHT (yet)", id=issuerId.hex()[:16])
                continue
            read.add(issuerId)
            self.infos[issuerId] = info
            schedule = info.schedule
            epochs = schedule.liveEpochs(now) + [schedule.epochAt(now) + 1]
            found = await defer.gatherResults([self.records.fetchKey(issuerId, e) for e in epochs])
            for record in found:
                if record is None:
                    continue
                keys[record.tokenKeyId] = KnownKey(
                    issuerId, record.epoch, tokens.decodePublicKey(record.spki),
                    schedule.start(record.epoch), schedule.spendableUntil(record.epoch),
                )
        # Keys of issuers that could not be read this time are kept until their window ends.
        for keyId, known in self.keys.items():
            if known.issuerId not in read and now < known.spendableUntil:
                keys[keyId] = known
        self.keys = keys
        return len(keys)


class TokenVerifier:
    """
    @param keys: an L{IIssuerKeys}.
    @param spent: an L{meshvpn.interfaces.ISpentTokenStore}.
    """

    def __init__(self, keys, spent):
        self.keys = keys
        self.spent = spent
        self._challenges = {}

    def _challengeOf(self, issuerId):
        digest = self._challenges.get(issuerId)
        if digest is None:
            digest = self._challenges[issuerId] = tokens.meshChallenge(issuerId).digest()
        return digest

    def check(self, token, now, spend=True):
        """
        @return: C{(status, KnownKey or None)}, status from L{paymsg}; with
            C{spend}, an accepted token is recorded as spent (durably).
        """
        known = self.keys.lookup(token.tokenKeyId)
        if known is None:
            return paymsg.UNKNOWN_KEY, None
        if not known.spendableAt(now):
            return paymsg.EXPIRED, known
        if token.challengeDigest != self._challengeOf(known.issuerId):
            return paymsg.INVALID, known
        try:
            tokens.verifyToken(token, known.publicKey)
        except BlindSignatureError:
            return paymsg.INVALID, known
        if spend and not self.spent.spend(token.tokenKeyId, token.nullifier()):
            return paymsg.DOUBLE_SPENT, known
        return paymsg.ACCEPTED, known
