"""Token-gated exits end to end in memory: a real 3-hop circuit, the exit's gate, the client's payer.

The circuit is the onion plane's own (in-memory links, L{task.Clock});
the exit's edge is the real stream edge behind L{PaidExitEdge}, and its
"internet" is a source that sends as many bytes as a stream asks for,
charging them to the circuit's throttle exactly where the exit's TCP side
charges them.  Tokens are real RFC 9578 tokens of a test issuer key.
"""

import attrs
from hypothesis import given, settings, strategies as st
from twisted.internet import task
from zope.interface import implementer
from twisted.trial import unittest

from meshvpn.client.paying import CircuitPayer, PaidExitDirectory, PaymentClient
from meshvpn.client.test.fakes import FakeTun
from meshvpn.exit.packetexit import PacketExit, PacketExitEdge
from meshvpn.exit.paygate import (
    BLOCK_WAIT, ISSUER_ALLOWANCE, UNCONFIRMED_CREDIT, GateTerms, PaidBucket, PaidExitEdge, PaymentGate, RedeemReporter,
    parseFreeRate, parseIssuers,
)
from meshvpn.exit.policy import defaultExitPolicy
from meshvpn.interfaces import IStream
from meshvpn.onion.cells import RelayCommand
from meshvpn.onion.origin import OriginCircuit
from meshvpn.payments import paymsg, tokens
from meshvpn.payments.blindrsa import BlindSigner
from meshvpn.payments.issuer import DOUBLE_SPENT, REDEEMED
from meshvpn.payments.records import ExitTerms, KnownKey
from meshvpn.payments.spentstore import SpentTokenStore
from meshvpn.payments.test.fakes import rsaKey
from meshvpn.payments.verifier import TokenVerifier
from meshvpn.payments.wallet import TokenWallet
from meshvpn.ratelimit import BandwidthLimiter
from meshvpn.streams.edge import StreamExitEdge, attachStreams
from meshvpn.streams.test.test_mux import Collect
from meshvpn.tun.test.test_packets import udp
from meshvpn.tools.onionfakes import MemoryNetwork, TestRelay

ISSUER = b"\x11" * 32
OTHER_ISSUER = b"\x22" * 32
KIB = 1024
PER_TOKEN = 64 * KIB
HOUR = 3600
ISSUER_API = "198.18.0.50:8480"


class Keys:
    """IIssuerKeys with the test issuer's key of epoch 10 (spendable during epochs 10 and 11)."""

    def __init__(self):
        self.key = rsaKey(0)
        spki = tokens.encodePublicKey(self.key.public_key())
        self.keyId = tokens.tokenKeyId(spki)
        self.known = {self.keyId: KnownKey(ISSUER, 10, self.key.public_key(), 10 * HOUR, 12 * HOUR)}
        self.unknownSeen = 0

    def lookup(self, keyId):
        return self.known.get(keyId)

    def unknownKeySeen(self):
        self.unknownSeen += 1

    def apiOf(self, issuerId):
        return ISSUER_API if issuerId == ISSUER else None

    def learn(self, key, issuer=ISSUER):
        """The exit reads a new key of the issuer (as from the DHT)."""
        keyId = tokens.tokenKeyId(tokens.encodePublicKey(key.public_key()))
        self.known[keyId] = KnownKey(issuer, 10, key.public_key(), 10 * HOUR, 12 * HOUR)

    def issue(self, issuer=ISSUER, key=None):
        key = key or self.key
        keyId = tokens.tokenKeyId(tokens.encodePublicKey(key.public_key()))
        request, pending = tokens.requestToken(key.public_key(), tokens.meshChallenge(issuer))
        return tokens.finishToken(key.public_key(), pending, tokens.signRequest(BlindSigner(key), keyId, request))


@implementer(IStream)
class Source:
    """
    The exit's "internet", as the exit's connection to a target (an
    L{IStream} spliced to the circuit stream): sends the number of bytes a
    stream asks for in 4 KiB reads, charged to the circuit's throttle and
    paused by it (and by the circuit stream's backpressure), as the exit's
    TCP side is.
    """

    def __init__(self, throttle):
        self.throttle = throttle
        self.receiver = None
        self.remaining = 0
        self.flowPaused = False
        self.throttlePaused = False
        source = self

        class ThrottleProducer:
            def pauseProducing(self):
                source.throttlePaused = True

            def resumeProducing(self):
                source.throttlePaused = False
                source._pump()

            def stopProducing(self):
                source.remaining = 0

        throttle.addProducer(ThrottleProducer())

    # IStream, as the circuit stream uses it
    def setReceiver(self, receiver):
        self.receiver = receiver

    def registerProducer(self, producer, streaming):
        pass

    def unregisterProducer(self):
        pass

    def pauseProducing(self):
        self.flowPaused = True

    def resumeProducing(self):
        self.flowPaused = False
        self._pump()

    def stopProducing(self):
        self.remaining = 0

    def write(self, data):
        self.remaining = int(data)
        self._pump()

    def halfClose(self):
        pass

    def close(self, reason):
        self.remaining = 0

    def _pump(self):
        while self.remaining > 0 and not self.flowPaused and not self.throttlePaused and self.receiver is not None:
            piece = b"x" * min(self.remaining, 4096)
            self.remaining -= len(piece)
            self.receiver.streamDataReceived(piece)
            self.throttle.account(len(piece), "in")


class Net:
    """
    A client, three relays and a gated exit in memory.  C{keys}, C{issuerId},
    C{wallet}, C{reporter} and C{now} may come from a real issuer (the
    regtest tests); by default a test key, an empty wallet and a recorder.
    """

    def __init__(self, test, freeRate=0, grace=30.0, keys=None, issuerId=ISSUER, wallet=None, reporter=None,
                 now=10 * HOUR + 60, bytesPerToken=PER_TOKEN, unconfirmed=UNCONFIRMED_CREDIT, packetExit=False):
        self.test = test
        self.clock = task.Clock()
        self.clock.advance(now)
        self.net = MemoryNetwork(self.clock)
        self.dir = {}
        self.keys = keys or Keys()
        self.limiter = BandwidthLimiter(self.clock)
        self.spent = SpentTokenStore(test.mktemp())
        self.terms = GateTerms((issuerId,), bytesPerToken, freeRate=freeRate, grace=grace, unconfirmed=unconfirmed)
        self.reported = []
        self.gate = PaymentGate(self.clock, self.terms, TokenVerifier(self.keys, self.spent), self.limiter, self.keys,
                                reporter=reporter or self)
        limiter = self.limiter

        def accept(circuit, host, port):
            return Source(limiter.circuit(circuit))

        inner = StreamExitEdge(accept)
        if packetExit:
            self.pe = PacketExit(self.clock, defaultExitPolicy(), "abcd1234", pool="100.64.0.0/29", tunFactory=FakeTun,
                                 nft=lambda script: None, forwarding=False)
            self.pe.startService()
            test.addCleanup(self.pe.stopService)
            inner = PacketExitEdge(inner, self.pe)
            self.pe.downloadGate = self.gate.packetsToClient  # as roles/payments.py wires it
        self.edge = PaidExitEdge(inner, self.gate)
        self.guard = TestRelay(self.net, self.clock, "guard", directory=self.dir)
        self.middle = TestRelay(self.net, self.clock, "middle", directory=self.dir)
        self.exit = TestRelay(self.net, self.clock, "exit", edge=self.edge, directory=self.dir)
        self.client = TestRelay(self.net, self.clock, "client", directory=self.dir)
        self.client.switch.keyRing = None
        self.wallet = wallet or TokenWallet(test.mktemp())
        directory = PaidExitDirectory(self.clock, None, self.wallet, ready=None)
        directory.exits = {self.exit.nodeId: (issuerId, ExitTerms(bytesPerToken, freeRate or 0, 2**64 - 1))}
        self.payments = PaymentClient(self.clock, self.wallet, directory)

    # the gate's reporter, recorded
    def report(self, issuerId, token, callback):
        self.reported.append((issuerId, token, callback))

    def addTokens(self, n):
        for _ in range(n):
            self.wallet.add(ISSUER, self.keys.issue(), 0, 12 * HOUR)

    def circuit(self, paying=True):
        path = [self.guard.hopSpec(), self.middle.hopSpec(), self.exit.hopSpec()]
        link = self.client.linkTo(path[0].nodeId, anonymous=True)
        circ = OriginCircuit(self.client.switch, link, path)
        attach = self.payments.onCircuit(attachStreams) if paying else attachStreams
        attach(circ)
        d = circ.build()
        self.net.pump()
        self.test.assertIs(self.test.successResultOf(d), circ)
        return circ

    def fetch(self, circ, nbytes, host="198.18.0.9", port=80):
        collect = Collect()
        d = circ.openStream(host, port, protocol=collect)
        self.net.pump()
        if d.called and not isinstance(d.result, CircuitPayer) and hasattr(d.result, "value"):
            return collect, self.test.failureResultOf(d)
        stream = self.test.successResultOf(d)
        stream.write(str(nbytes).encode())
        self.drain()
        return collect, stream

    def drain(self):
        idle = 0
        while idle < 40:  # ten quiet seconds of the clock: nothing more will come
            if self.net.pump():
                idle = 0
            else:
                idle += 1
                self.clock.advance(BLOCK_WAIT)

    def payer(self, circ):
        self.test.assertIsInstance(circ.streamHandler, CircuitPayer)
        return circ.streamHandler


def received(collect):
    return sum(len(d) for d in collect.data)


class PaidCircuitTests(unittest.TestCase):
    def test_paysBeforeTheFirstStreamAndWhenAsked(self):
        n = Net(self)
        n.addTokens(5)
        circ = n.circuit()
        collect, _ = n.fetch(circ, int(2.5 * PER_TOKEN))
        self.assertEqual(received(collect), int(2.5 * PER_TOKEN))
        # One token before the BEGIN, then one each time a quarter of the credit was left.
        self.assertEqual(n.payments.counters["tokens_spent"], 3)
        self.assertEqual(n.gate.counters["tokens_accepted"], 3)
        self.assertEqual(n.payments.counters["receipts"], {"accepted": 3})
        self.assertEqual(n.wallet.usable(ISSUER, n.clock.seconds()), 2)
        acct = next(iter(n.gate.accounts.values()))
        self.assertLessEqual(acct.usedFree, 2 * 4096)  # at most one read past the credit per pause
        self.assertEqual(len(n.reported), 3)  # each accepted token is reported to its issuer
        self.assertEqual(n.gate.counters["begins_refused"], 0)
        self.assertIsInstance(acct.throttle.bucket, PaidBucket)

    def test_spareCircuitsPayNothing(self):
        n = Net(self)
        n.addTokens(2)
        n.circuit()
        self.assertEqual(n.payments.counters["tokens_spent"], 0)

    def test_doubleSpendRefused(self):
        n = Net(self)
        token = n.keys.issue()
        circ = n.circuit(paying=False)
        attachStreams(circ)
        for _ in range(2):
            circ.sendRelay(RelayCommand.PAYMENT, 0, paymsg.TokenMessage(token).encode())
        receipts = self.captureReceipts(n, circ)
        self.assertEqual([r.status for r in receipts], [paymsg.ACCEPTED, paymsg.DOUBLE_SPENT])
        # ... also on another circuit, and after the exit restarts (the store is on disk).
        n.spent.close()
        n.gate.verifier.spent = SpentTokenStore(n.spent.directory)
        other = n.circuit(paying=False)
        other.sendRelay(RelayCommand.PAYMENT, 0, paymsg.TokenMessage(token).encode())
        self.assertEqual([r.status for r in self.captureReceipts(n, other)], [paymsg.DOUBLE_SPENT])

    def captureReceipts(self, n, circ):
        got = []

        class Tap:
            def __init__(self, inner):
                self.inner = inner

            def relayReceived(self, command, streamId, data):
                if command == RelayCommand.PAYMENT:
                    got.append(paymsg.parsePayment(data))
                elif self.inner is not None:
                    self.inner.relayReceived(command, streamId, data)

        circ.streamHandler = Tap(circ.streamHandler)
        n.net.pump()
        return got

    def test_forgedAndForeignTokensRefused(self):
        n = Net(self)
        good = n.keys.issue()
        forged = tokens.Token(good.nonce, good.challengeDigest, good.tokenKeyId, bytes(255) + b"\x01")
        otherIssuer = n.keys.issue(issuer=OTHER_ISSUER)  # right key, another issuer's challenge
        unknownKey = n.keys.issue(key=rsaKey(1))
        circ = n.circuit(paying=False)
        for t in (forged, otherIssuer, unknownKey):
            circ.sendRelay(RelayCommand.PAYMENT, 0, paymsg.TokenMessage(t).encode())
        statuses = [r.status for r in self.captureReceipts(n, circ)]
        self.assertEqual(statuses, [paymsg.INVALID, paymsg.INVALID, paymsg.UNKNOWN_KEY])
        self.assertEqual(n.keys.unknownSeen, 1)  # the exit looks for new keys
        self.assertEqual(n.spent.count(), 0)  # nothing refused is recorded

    def test_expiredEpochRefused(self):
        n = Net(self)
        token = n.keys.issue()
        n.clock.advance(2 * HOUR)  # past the end of epoch 11
        circ = n.circuit(paying=False)
        circ.sendRelay(RelayCommand.PAYMENT, 0, paymsg.TokenMessage(token).encode())
        self.assertEqual([r.status for r in self.captureReceipts(n, circ)], [paymsg.EXPIRED])

    def test_issuerSaysSpentElsewhere(self):
        """The issuer's spent list answers DOUBLE_SPENT: the credit is withdrawn and the client pays again."""
        n = Net(self)
        n.addTokens(3)
        circ = n.circuit()
        n.fetch(circ, 1000)
        issuerId, token, verdict = n.reported[0]
        acct = next(iter(n.gate.accounts.values()))
        before = acct.credit
        verdict(DOUBLE_SPENT)
        n.net.pump()
        self.assertEqual(n.gate.counters["revoked"], 1)
        self.assertEqual(n.payments.counters["receipts"].get(paymsg.STATUS_NAMES[paymsg.REVOKED]), 1)
        self.assertEqual(n.payments.counters["tokens_spent"], 2)  # paid again at once
        self.assertEqual(acct.credit, before)
        n.reported[1][2](REDEEMED)  # a good verdict changes nothing
        self.assertEqual(acct.credit, before)

    def test_paymentToAMiddleHopClosesTheCircuit(self):
        """Tokens travel end to end: a middle relay that is sent one treats it as a protocol error."""
        n = Net(self)
        circ = n.circuit(paying=False)
        circ.sendRelay(RelayCommand.PAYMENT, 0, paymsg.TokenMessage(n.keys.issue()).encode(), hop=1)
        n.net.pump()
        self.assertTrue(circ.closed)
        self.assertEqual(n.gate.counters["tokens_accepted"], 0)

    def test_malformedPaymentClosesOnlyThatCircuit(self):
        n = Net(self)
        bad = n.circuit(paying=False)
        good = n.circuit(paying=False)
        bad.sendRelay(RelayCommand.PAYMENT, 0, b"\x01short")
        n.net.pump()
        self.assertTrue(bad.closed)
        self.assertFalse(good.closed)


class UnpaidTests(unittest.TestCase):
    def test_noTokensNoFreeRate_refusedAtOnceAndCircuitClosed(self):
        n = Net(self)
        circ = n.circuit()
        collect, failure = n.fetch(circ, 1000)
        self.assertEqual(failure.value.reason, 11)  # END RESOURCELIMIT, not a hang
        self.assertEqual(received(collect), 0)
        self.assertEqual(n.gate.counters["begins_refused"], 1)
        self.assertEqual(n.payments.counters["out_of_tokens"], 1)
        self.assertTrue(circ.closed)  # the client closed it: its next circuit avoids this exit
        self.assertIn(n.exit.nodeId, n.payments.unpaidRefusals)
        self.flushLoggedErrors()

    def test_runningOutMidStream_clientClosesAtOnce(self):
        n = Net(self)
        n.addTokens(1)
        circ = n.circuit()
        collect, stream = n.fetch(circ, 3 * PER_TOKEN)
        got = received(collect)
        self.assertGreaterEqual(got, PER_TOKEN - 4096)
        self.assertLess(got, 3 * PER_TOKEN)
        self.assertTrue(circ.closed)  # the exit said credit 0, we had no token: streams end, no hang
        self.assertEqual(n.payments.counters["out_of_tokens"], 2)  # low water, then empty
        self.assertEqual(n.payments.counters["circuits_closed"], 1)
        self.assertEqual(n.gate.accounts, {})  # the throttle and credit are forgotten with the circuit

    def test_silentClientClosedAfterGrace(self):
        """A client that ignores NEEDED is paused, then closed when the grace period ends."""
        n = Net(self, grace=15.0)
        circ = n.circuit(paying=False)
        circ.sendRelay(RelayCommand.PAYMENT, 0, paymsg.TokenMessage(n.keys.issue()).encode())
        n.net.pump()
        collect, _ = n.fetch(circ, 3 * PER_TOKEN)
        self.assertFalse(circ.closed)
        acct = next(iter(n.gate.accounts.values()))
        self.assertLessEqual(acct.credit, 0)
        self.assertTrue(acct.throttle.paused)  # the exit stopped reading for this circuit
        n.clock.advance(6.0)
        n.net.pump()
        self.assertTrue(circ.closed)
        self.assertEqual(n.gate.counters["circuits_closed_unpaid"], 1)
        self.assertEqual(n.gate.accounts, {})

    def test_freeRateCarriesUnpaidCircuits(self):
        n = Net(self, freeRate=8 * KIB)
        circ = n.circuit()  # the wallet is empty
        collect, _ = n.fetch(circ, 32 * KIB)
        self.assertEqual(received(collect), 32 * KIB)
        self.assertEqual(n.gate.counters["begins_refused"], 0)
        acct = next(iter(n.gate.accounts.values()))
        self.assertEqual(acct.usedFree, 32 * KIB)
        self.assertFalse(circ.closed)
        self.assertGreater(acct.throttle.pauses, 0)  # the free rate held the source back


class PreferenceTests(unittest.TestCase):
    def relays(self, n):
        from meshvpn.circuits.pathselect import RelayInfo

        def info(name, roles):
            return RelayInfo(nodeId=name, host="198.18.0.1", roles=frozenset(roles))

        return [info(b"g" * 32, {"guard"}), info(b"m" * 32, {"middle"}), info(n.exit.nodeId, {"exit"}),
                info(b"f" * 32, {"exit"})]

    def exits(self, relays):
        return {r.nodeId for r in relays if "exit" in r.roles}

    def test_withTokensOnlyAcceptingExits(self):
        n = Net(self)
        n.addTokens(1)
        self.assertEqual(self.exits(n.payments.prefer(self.relays(n))), {n.exit.nodeId})

    def test_withoutTokensAvoidExitsWithNoFreeRate(self):
        n = Net(self)
        self.assertEqual(self.exits(n.payments.prefer(self.relays(n))), {b"f" * 32})

    def test_onlyPaidExitsKnownAndNoTokens_keepAll(self):
        n = Net(self)
        relays = [r for r in self.relays(n) if r.nodeId != b"f" * 32]
        self.assertEqual(n.payments.prefer(relays), relays)


class ReporterTests(unittest.TestCase):
    def test_batchesAndRetries(self):
        clock = task.Clock()
        calls = []

        class Client:
            def __init__(self, fail):
                self.fail = fail

            async def redeem(self, encoded):
                calls.append(len(encoded))
                if self.fail:
                    from meshvpn.payments.issuerclient import IssuerError
                    raise IssuerError("down")
                return bytes([REDEEMED] * (len(encoded) - 1) + [DOUBLE_SPENT])

        state = {"fail": True}
        reporter = RedeemReporter(clock, lambda issuer: "127.0.0.1:1", clientFor=lambda api: Client(state["fail"]))
        verdicts = []
        token = Keys().issue()
        for _ in range(70):
            reporter.report(ISSUER, token, verdicts.append)
        clock.advance(0.5)
        self.assertEqual(calls, [64])
        self.assertEqual(verdicts, [])
        state["fail"] = False
        clock.advance(5.0)
        self.assertEqual(calls, [64, 64, 6])
        self.assertEqual(len(verdicts), 70)
        self.assertEqual(verdicts.count(DOUBLE_SPENT), 2)


class MessageParserTests(unittest.TestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=400), st.sampled_from([b"", b"\x01", b"\x02", b"\x03"]))
    def test_parseRefusesOrRoundTrips(self, junk, kind):
        data = kind + junk
        try:
            msg = paymsg.parsePayment(data)
        except paymsg.PaymentMessageError:
            return
        self.assertEqual(msg.encode(), data)

    def test_roundTrips(self):
        for msg in (paymsg.Receipt(paymsg.ACCEPTED, 5), paymsg.Needed(0, 2**64 - 1, (ISSUER, OTHER_ISSUER))):
            self.assertEqual(paymsg.parsePayment(msg.encode()), msg)


class SettingsTests(unittest.TestCase):
    def test_parsers(self):
        self.assertEqual(parseFreeRate("none"), 0)
        self.assertEqual(parseFreeRate("0"), 0)
        self.assertIsNone(parseFreeRate("unlimited"))
        self.assertEqual(parseFreeRate("64K"), 64 * KIB)
        self.assertEqual(parseIssuers("11" * 32 + "," + "22" * 32), (ISSUER, OTHER_ISSUER))
        self.assertRaises(ValueError, parseIssuers, "xyz")
        self.assertRaises(ValueError, parseIssuers, ",".join(["11" * 32] * 9))


class SharedIssuer:
    """
    The issuer's authoritative spent list, as several exits' reporter: the
    reports wait until the test lets the issuer answer (as if it were slow).
    """

    def __init__(self, test):
        self.spent = SpentTokenStore(test.mktemp())
        self.queue = []

    def report(self, issuerId, token, callback):
        self.queue.append((token, callback))

    def answer(self):
        queue, self.queue = self.queue, []
        for token, callback in queue:
            callback(REDEEMED if self.spent.spend(token.tokenKeyId, token.nullifier()) else DOUBLE_SPENT)


class DoubleSpendWindowTests(unittest.TestCase):
    """One token spent at three exits at once, before the issuer's verdicts arrive."""

    def spendAtThreeExits(self, unconfirmed):
        keys = Keys()
        issuer = SharedIssuer(self)
        token = keys.issue()
        nets = [Net(self, keys=keys, reporter=issuer, unconfirmed=unconfirmed) for _ in range(3)]
        collects = []
        for n in nets:
            n.wallet.add(ISSUER, token, 0, 12 * HOUR)  # the attacker's copies of one token
            collect, _ = n.fetch(n.circuit(), 10 * PER_TOKEN)
            collects.append(collect)
        before = [received(c) for c in collects]
        issuer.answer()  # the first report wins; the others hear "spent elsewhere"
        for n in nets:
            n.drain()
        return nets, before, [received(c) for c in collects]

    def test_boundedToOneTokenPlusTheUnconfirmedCredits(self):
        unconfirmed = 8 * KIB
        nets, before, after = self.spendAtThreeExits(unconfirmed)
        slack = 2 * 4096  # at most one read past the credit per pause
        for got in before:  # each exit waits for the issuer past the first allowance
            self.assertLessEqual(got, unconfirmed + slack)
            self.assertGreater(got, 0)
        self.assertLessEqual(sum(after), PER_TOKEN + 2 * unconfirmed + 3 * slack)
        self.assertGreaterEqual(max(after), PER_TOKEN - slack)  # the honest first spender got the whole token
        self.assertEqual(sum(n.gate.counters["revoked"] for n in nets), 2)
        self.assertEqual(sum(n.gate.counters["confirmed"] for n in nets), 1)
        self.assertTrue(all(n.gate.accounts == {} or all(a.credit <= 0 for a in n.gate.accounts.values()) for n in nets))

    def test_withoutTheBoundThreeTokensWorth(self):
        """The same attack with the whole credit usable at once (the window this closes)."""
        nets, before, after = self.spendAtThreeExits(PER_TOKEN)
        self.assertGreaterEqual(sum(before), 3 * (PER_TOKEN - 2 * 4096))

    def test_verdictResumesAtOnce(self):
        """A circuit paused for the issuer's verdict goes on the moment it arrives, not at its next look."""
        issuer = SharedIssuer(self)
        n = Net(self, reporter=issuer, unconfirmed=8 * KIB)
        n.addTokens(1)
        collect, _ = n.fetch(n.circuit(), PER_TOKEN // 2)
        before = received(collect)
        issuer.answer()
        n.clock.advance(0)
        while n.net.pump():
            n.clock.advance(0)
        self.assertEqual(received(collect), PER_TOKEN // 2)
        self.assertGreater(received(collect), before)

    def test_issuerSilent_circuitClosedAfterGrace(self):
        """An exit that cannot hear from the issuer gives the first allowance, then closes: no hang."""
        n = Net(self, reporter=SharedIssuer(self), unconfirmed=8 * KIB, grace=20.0)
        n.addTokens(1)
        circ = n.circuit()
        collect, _ = n.fetch(circ, PER_TOKEN)
        self.assertLessEqual(received(collect), 8 * KIB + 8192)
        n.clock.advance(20.0)
        n.net.pump()
        self.assertTrue(circ.closed)
        self.assertEqual(n.gate.counters["unconfirmed_closed"], 1)
        self.assertEqual(n.payments.counters["tokens_spent"], 1)  # no second token was asked for meanwhile
        self.flushLoggedErrors()


class PacketModeTests(unittest.TestCase):
    LEASE = "100.64.0.2"  # the packet exit's first lease in its /29 pool

    def test_downloadsChargedLikeUploads(self):
        n = Net(self, packetExit=True)
        n.addTokens(6)
        circ = n.circuit()
        got = []
        circ.setPacketReceiver(got.extend)
        circ.sendPackets([udp("10.9.0.2", "198.18.0.5", 1000, 53, b"q")])
        n.net.pump()  # dropped (no credit yet); NEEDED made the client pay
        self.assertEqual(n.payments.counters["tokens_spent"], 1)
        circ.sendPackets([udp("10.9.0.2", "198.18.0.5", 1000, 53, b"q")])
        n.net.pump()
        self.assertEqual(len(n.pe.tun.written), 1)
        reply = udp("198.18.0.5", self.LEASE, 53, 1000, b"x" * 1000)
        for _ in range(20):  # 200 packets of 1028 bytes: about three tokens' worth, downloads only
            n.pe.tun.receiver([reply] * 10)
            n.net.pump()
            n.clock.advance(0.1)
            n.net.pump()
        self.assertEqual(len(got), 200)
        acct = next(iter(n.gate.accounts.values()))
        self.assertGreaterEqual(acct.usedPaid, 200 * len(reply))
        self.assertGreaterEqual(n.payments.counters["tokens_spent"], 4)
        self.assertEqual(n.pe.counters["gated_in"], 0)

    def test_downloadsDroppedWithoutCredit(self):
        n = Net(self, packetExit=True)
        n.addTokens(1)
        circ = n.circuit(paying=False)
        attachStreams(circ)
        got = []
        circ.setPacketReceiver(got.extend)
        circ.sendRelay(RelayCommand.PAYMENT, 0, paymsg.TokenMessage(n.wallet.take(ISSUER, n.clock.seconds())).encode())
        circ.sendPackets([udp("10.9.0.2", "198.18.0.5", 1000, 53, b"q")])
        n.net.pump()
        reply = udp("198.18.0.5", self.LEASE, 53, 1000, b"x" * 1000)
        for _ in range(10):  # twice the one token's credit, and the client does not pay again
            n.pe.tun.receiver([reply] * 13)
            n.net.pump()
        self.assertLess(len(got), 80)
        self.assertGreater(n.pe.counters["gated_in"], 0)
        self.assertGreater(n.gate.counters["packets_dropped"], 0)


class UnknownKeyTests(unittest.TestCase):
    """A token of a key the exit does not know yet (a new epoch's) is not spent: it goes back to the wallet."""

    def test_returnedThenSpentOnceTheExitKnowsTheKey(self):
        n = Net(self)
        newKey = rsaKey(1)
        for _ in range(2):
            n.wallet.add(ISSUER, n.keys.issue(key=newKey), 0, 12 * HOUR)
        circ = n.circuit()
        collect, failure = n.fetch(circ, 1000)
        self.assertEqual(failure.value.reason, 11)  # nothing paid yet: the BEGIN was refused
        self.assertEqual(n.payments.counters["receipts"], {paymsg.STATUS_NAMES[paymsg.UNKNOWN_KEY]: 1})
        self.assertEqual(n.payments.counters["returned"], 1)
        self.assertEqual(n.wallet.usable(ISSUER, n.clock.seconds()), 2)  # back in the wallet
        self.assertEqual(n.keys.unknownSeen, 1)  # the exit looks for the issuer's new keys
        n.keys.learn(newKey)
        n.clock.advance(35.0)  # the client asks again once the exit had time to look
        n.net.pump()
        self.assertEqual(n.payments.counters["receipts"].get("accepted"), 1)
        self.assertEqual(n.wallet.usable(ISSUER, n.clock.seconds()), 1)
        self.assertEqual(n.payments.counters["tokens_spent"], 1)
        self.flushLoggedErrors()

    def test_otherKeyTriedAtOnce(self):
        n = Net(self)
        newKey = rsaKey(1)
        unknownId = tokens.tokenKeyId(tokens.encodePublicKey(newKey.public_key()))

        class UnknownFirst:
            def shuffle(self, paths):
                paths.sort(key=lambda path: TokenWallet._keyIdOf(path) != unknownId)

        n.wallet.rng = UnknownFirst()
        n.wallet.add(ISSUER, n.keys.issue(key=newKey), 0, 12 * HOUR)
        n.wallet.add(ISSUER, n.keys.issue(), 0, 12 * HOUR)
        circ = n.circuit()
        n.fetch(circ, 1000)  # its BEGIN followed the refused token: refused too (credit came right after)
        collect, _ = n.fetch(circ, 1000)
        self.assertFalse(circ.closed)
        self.assertEqual(received(collect), 1000)
        self.assertEqual(n.payments.counters["receipts"],
                         {paymsg.STATUS_NAMES[paymsg.UNKNOWN_KEY]: 1, "accepted": 1})
        left = n.wallet.take(ISSUER, n.clock.seconds())
        self.assertEqual(left.tokenKeyId, unknownId)  # the refused one is spendable again

    def test_refusedForAnotherReasonStaysSpent(self):
        n = Net(self)
        n.wallet.add(ISSUER, n.keys.issue(issuer=OTHER_ISSUER), 0, 12 * HOUR)  # invalid here: wrong challenge
        circ = n.circuit()
        n.fetch(circ, 1000)
        self.assertEqual(n.payments.counters["returned"], 0)
        self.assertEqual(n.wallet.usable(ISSUER, n.clock.seconds()), 0)
        self.flushLoggedErrors()

    def test_notAcceptedIsNotRecordedSpent(self):
        """The exit records a token spent only once it accepts it, so a refused token is really unspent."""
        n = Net(self)
        n.keys.known[n.keys.keyId] = attrs.evolve(n.keys.known[n.keys.keyId], issuerId=OTHER_ISSUER)
        token = n.keys.issue(issuer=OTHER_ISSUER)
        circ = n.circuit(paying=False)
        circ.sendRelay(RelayCommand.PAYMENT, 0, paymsg.TokenMessage(token).encode())
        n.net.pump()
        self.assertEqual(n.spent.count(), 0)
        self.assertEqual(n.gate.counters["refused"], {paymsg.STATUS_NAMES[paymsg.NOT_ACCEPTED]: 1})


class IssuerAPITests(unittest.TestCase):
    """With no free rate, an unpaid circuit still reaches the accepted issuers' APIs: tokens can be bought through it."""

    def test_unpaidCircuitReachesTheIssuerOnly(self):
        n = Net(self)
        circ = n.circuit()  # an empty wallet
        host, port = ISSUER_API.split(":")
        collect, _ = n.fetch(circ, 5000, host, int(port))
        self.assertEqual(received(collect), 5000)
        self.assertFalse(circ.closed)  # no NEEDED: the client is buying, not spending here
        self.assertEqual(n.gate.counters["issuer_streams"], 1)
        self.assertEqual(n.payments.counters["out_of_tokens"], 0)
        other = n.circuit()
        collect, failure = n.fetch(other, 1000)
        self.assertEqual(failure.value.reason, 11)  # anywhere else: refused as before
        self.flushLoggedErrors()

    def test_issuerAllowanceBounded(self):
        n = Net(self)
        circ = n.circuit()
        host, port = ISSUER_API.split(":")
        collect, _ = n.fetch(circ, 2 * ISSUER_ALLOWANCE, host, int(port))
        self.assertLessEqual(received(collect), ISSUER_ALLOWANCE + 8192)
        self.assertGreater(received(collect), ISSUER_ALLOWANCE // 2)
        n.clock.advance(30.0)  # past the grace period: closed like any unpaid circuit
        n.net.pump()
        self.assertTrue(circ.closed)
        self.assertEqual(n.gate.counters["circuits_closed_unpaid"], 1)
