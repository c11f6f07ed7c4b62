"""Exit policies as Tor reads them (issue 12, item 7).

Each case here was compared with Tor's policies.c and its tests
(test_policy.c: the summary vectors are Tor's): parsing, the summary that
clients see (masked rejects counted once they cover more than 2^25 IPv4
addresses or 2^48 IPv6 /64s, the cut at 1000 characters), the client's
check, and end to end: Tor's ReducedExitPolicy and default exit policy
parsed, summarised, put in a descriptor, published in an in-memory DHT and
chosen (or not) by a client for ports 443 and 25.
"""

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.dht.descriptor import makeDescriptor
from meshvpn.dht.directory import RelayDirectory
from meshvpn.errors import NoExitForTarget
from meshvpn.exit.policy import ExitPolicy, PolicyParseError, defaultExitPolicy, parsePolicy, summaryAllows
from meshvpn.circuits.pathselect import choosePath
from meshvpn.circuits.relayinfo import relayInfo
from meshvpn.identity import NodeIdentity
from meshvpn.dht.test.test_rpc import T0, Net

_keys = random.Random(12)


def newIdentity():
    """Seeded keys of our own (the DHT tests' seeded stream stays theirs)."""
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    return NodeIdentity(SigningKey(_keys.randbytes(32)), PrivateKey(_keys.randbytes(32)))

# Tor's REDUCED_EXIT_POLICY (policies.c), what "ReducedExitPolicy 1" appends.
REDUCED = (
    "accept *:20-23,accept *:43,accept *:53,accept *:79-81,accept *:88,accept *:110,accept *:143,accept *:194,"
    "accept *:220,accept *:389,accept *:443,accept *:464,accept *:465,accept *:531,accept *:543-544,accept *:554,"
    "accept *:563,accept *:587,accept *:636,accept *:706,accept *:749,accept *:873,accept *:902-904,accept *:981,"
    "accept *:989-995,accept *:1194,accept *:1220,accept *:1293,accept *:1500,accept *:1533,accept *:1677,"
    "accept *:1723,accept *:1755,accept *:1863,accept *:2082-2083,accept *:2086-2087,accept *:2095-2096,"
    "accept *:2102-2104,accept *:3128,accept *:3389,accept *:3690,accept *:4321,accept *:4643,accept *:5050,"
    "accept *:5190,accept *:5222-5223,accept *:5228,accept *:5900,accept *:6660-6669,accept *:6679,accept *:6697,"
    "accept *:8000,accept *:8008,accept *:8074,accept *:8080,accept *:8082,accept *:8087-8088,accept *:8232-8233,"
    "accept *:8332-8333,accept *:8443,accept *:8888,accept *:9418,accept *:9999,accept *:10000,accept *:11371,"
    "accept *:19294,accept *:19638,accept *:50002,accept *:64738,reject *:*"
)
REDUCED_SUMMARY = (
    "accept 20-23,43,53,79-81,88,110,143,194,220,389,443,464-465,531,543-544,554,563,587,636,706,749,873,902-904,"
    "981,989-995,1194,1220,1293,1500,1533,1677,1723,1755,1863,2082-2083,2086-2087,2095-2096,2102-2104,3128,3389,"
    "3690,4321,4643,5050,5190,5222-5223,5228,5900,6660-6669,6679,6697,8000,8008,8074,8080,8082,8087-8088,"
    "8232-8233,8332-8333,8443,8888,9418,9999-10000,11371,19294,19638,50002,64738"
)
# Tor's DEFAULT_EXIT_POLICY.
TOR_DEFAULT = (
    "reject *:25,reject *:119,reject *:135-139,reject *:445,reject *:563,reject *:1214,reject *:4661-4666,"
    "reject *:6346-6429,reject *:6699,reject *:6881-6999,accept *:*"
)
TOR_DEFAULT_SUMMARY = "reject 25,119,135-139,445,563,1214,4661-4666,6346-6429,6699,6881-6999"
REDUCED_FILE = os.path.join(os.path.dirname(__file__), "reduced_exit_policy.torrc")


def summaryOf(text, family=4):
    """The summary of C{text} run as an exit runs it (private space rejected first, default ports after)."""
    return defaultExitPolicy(text).summary(family)


class PublishedPoliciesTests(unittest.TestCase):
    def test_reducedSummaryFitsTheDescriptor(self):
        """Old code: the 390-character summary broke the descriptor's 256-character limit, so the exit never published."""
        summary = summaryOf(REDUCED)
        self.assertEqual(summary, REDUCED_SUMMARY)
        self.assertEqual(len(summary), 390)
        d = makeDescriptor(newIdentity(), {"udp": "198.18.3.1:9000", "tls": "198.18.3.1:9001"}, {"exit"}, T0,
                           exitPolicy=summary)
        self.assertEqual(d.exitPolicy, summary)

    def test_torrcFileReadsTheSame(self):
        with open(REDUCED_FILE) as f:
            fromFile = parsePolicy(f.read())
        self.assertEqual(fromFile, parsePolicy(REDUCED))
        self.assertEqual(ExitPolicy(fromFile).summary(), REDUCED_SUMMARY)

    def test_torDefault(self):
        self.assertEqual(summaryOf(TOR_DEFAULT), TOR_DEFAULT_SUMMARY)
        self.assertEqual(summaryOf(""), TOR_DEFAULT_SUMMARY)

    def test_endToEnd(self):
        """parse -> summary -> descriptor -> published in the DHT -> a client picks the exit for 443, not for 25."""
        net = Net(self, 12)
        published = []
        # One /16 per relay, so one path can hold any three of them.  The simulated
        # network is in memory: these addresses are never sent to.
        hosts = iter(["198.18.3.1", "198.19.100.1", "203.0.113.1", "192.0.2.1"])

        class OneEach:
            def allocate(self):
                return (next(hosts), 4000)

        def freshNode():
            pool, net.pool = net.pool, OneEach()
            try:
                return net.add()
            finally:
                net.pool = pool

        def publish(flags, policyText=None):
            # The relay publishes its own descriptor from its own host: role announcements
            # are stored only from the host they name (the directory's rule against free keys).
            node = freshNode()
            ident, (host, port) = node.identity, node.address
            summary = summaryOf(policyText) if policyText is not None else "reject 1-65535"
            d = makeDescriptor(ident, {"udp": f"{host}:{port}", "tls": f"{host}:9001"}, flags, T0, exitPolicy=summary)
            net.run(RelayDirectory(node, ident).publish(d))
            published.append(d)

        publish({"guard"})
        publish({"middle"})
        publish({"exit"}, REDUCED)
        publish({"exit"}, TOR_DEFAULT)
        reader = RelayDirectory(net.add(clientMode=True), newIdentity())
        relays = {}
        for role in ("guard", "middle", "exit"):
            for d in net.run(reader.sample(role, 10), 20):
                relays[d.nodeId] = relayInfo(d)
        self.assertEqual(set(relays), {d.nodeId for d in published})
        exits = {d.nodeId for d in published if "exit" in d.flags}
        for _ in range(10):
            guard, middle, exit = choosePath(list(relays.values()), target=("198.18.99.1", 443))
            self.assertIn(exit.nodeId, exits)
        self.assertRaises(NoExitForTarget, choosePath, list(relays.values()), target=("198.18.99.1", 25))


# Tor's test_policy.c summary vectors (policies run with the default policy appended).
TOR_VECTORS = [
    ("reject 192.168.0.0/16:*,reject 0.0.0.0/8:*,reject 10.0.0.0/8:*,accept *:10-30,accept *:90,reject *:*",
     "accept 10-30,90", "accept 10-30,90"),
    ("reject 11.0.0.0/9:80,reject 12.0.0.0/9:80,reject 13.0.0.0/9:80,reject 14.0.0.0/9:80,accept *:*",
     "accept 1-65535", "accept 1-65535"),
    ("reject 11.0.0.0/9:80,reject 12.0.0.0/9:80,reject 13.0.0.0/9:80,reject 14.0.0.0/9:80,reject 15.0.0.0:81,accept *:*",
     "accept 1-65535", "accept 1-65535"),
    ("reject 11.0.0.0/9:80,reject 12.0.0.0/9:80,reject 13.0.0.0/9:80,reject 14.0.0.0/9:80,reject 15.0.0.0:80,accept *:*",
     "reject 80", "accept 1-65535"),
    ("accept 11.0.0.0/9:80,reject *:*", "reject 1-65535", "reject 1-65535"),
    ("accept *:80,accept *:81,accept *:100-110,accept *:111,reject *:*", "accept 80-81,100-111", "accept 80-81,100-111"),
    ("accept *:1,accept *:3,accept *:65535,reject *:*", "accept 1,3,65535", "accept 1,3,65535"),
    ("reject *:1,reject *:3,reject *:5,reject *:7,accept *:*", "reject 1,3,5,7", "reject 1,3,5,7"),
    ("reject 149.56.1.1:*,reject [2607:5300:1:1::1:0]:*,accept *:80,accept *:443,reject *:*",
     "accept 80,443", "accept 80,443"),
    ("reject 149.56.0.0/16,reject6 2607:5300::/32,reject6 2608:5300::/64,reject6 2609:5300::/96,accept *:80,"
     "accept *:443,reject *:*", "accept 80,443", "accept 80,443"),
    ("reject 148.0.0.0/7,reject6 2600::/16,accept *:80,accept *:443,reject *:*", "accept 80,443", "accept 80,443"),
    ("reject 148.0.0.0/6,reject6 2600::/15,accept *:80,accept *:443,reject *:*", "reject 1-65535", "reject 1-65535"),
    ("reject 128.0.0.0/1,reject6 8000::/1,accept *:80,accept *:443,reject *:*", "reject 1-65535", "reject 1-65535"),
    ("reject 0.0.0.0/0,reject6 ::/0,accept *:80,accept *:443,reject *:*", "reject 1-65535", "reject 1-65535"),
]


class SummaryAsTorTests(unittest.TestCase):
    def test_torVectors(self):
        failures = []
        for text, four, six in TOR_VECTORS:
            got = (summaryOf(text, 4), summaryOf(text, 6))
            if got != (four, six):
                failures.append((text, got, (four, six)))
        self.assertEqual(failures, [])

    def test_maskedRejectsCounted(self):
        """Old code skipped every masked reject: a /6 reject of port 80 left 'accept 80' in the summary."""
        self.assertEqual(summaryOf("reject 148.0.0.0/6:80,accept *:80,accept *:443,reject *:*"), "accept 443")
        self.assertEqual(summaryOf("reject 148.0.0.0/7:80,accept *:80,accept *:443,reject *:*"), "accept 80,443")

    def test_cutAt1000Characters(self):
        """Tor's truncation vector: rejecting the odd ports below 2000 is cut to 'accept 2,...,522'."""
        text = ",".join(f"reject *:{p}" for p in range(1, 2000, 2)) + ",accept *:*"
        expected = "accept " + ",".join(str(p) for p in range(2, 523, 2))
        self.assertEqual(summaryOf(text), expected)
        self.assertLessEqual(len(expected), 1000)

    def test_longestAccepted(self):
        text = ",".join(f"accept *:{p}" for p in range(1, 530, 2)) + ",reject *:*"
        expected = "accept " + ",".join(str(p) for p in range(1, 524, 2))
        self.assertEqual(summaryOf(text), expected)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), st.integers(1, 65535), st.integers(1, 65535)), max_size=400))
    def test_neverLongerThan1000(self, spec):
        text = ",".join(f"{'accept' if a else 'reject'} *:{min(lo, hi)}-{max(lo, hi)}" for a, lo, hi in spec)
        for family in (4, 6):
            self.assertLessEqual(len(ExitPolicy.fromText(text).summary(family)), 1000)


class ClientCheckTests(unittest.TestCase):
    def test_portsOutsideTheRangeRefused(self):
        """Old code: summaryAllows('reject 25', 0) and (..., 70000) were True."""
        for port in (0, 70000, -1, 65536, True, "80", None, 80.0):
            self.assertFalse(summaryAllows("reject 25", port), port)
            self.assertFalse(summaryAllows("accept 1-65535", port), port)
        self.assertTrue(summaryAllows("reject 25", 65535))


class ParseAsTorTests(unittest.TestCase):
    def test_unbracketedIPv6WithMask(self):
        """Old code: 'reject6 2607:5300::/32' failed with a misleading 'bad port'."""
        policy = ExitPolicy.fromText("reject6 2607:5300::/32,reject6 2607:5301::/32:443,accept *:*")
        self.assertFalse(policy.allows("2607:5300::1", 80))
        self.assertTrue(policy.allows("2607:5301::1", 80))
        self.assertFalse(policy.allows("2607:5301::1", 443))

    def test_ipv4WithAccept6IgnoredWithWarning(self):
        """Old code: 'accept6 1.2.3.4:*' stopped the node; Tor ignores the line with a warning."""
        warnings = []
        rules = parsePolicy("accept6 1.2.3.4:*,reject6 2.4.6.0/24:*,accept6 *4:*,accept *:80", warn=warnings.append)
        self.assertEqual([r.text for r in rules], ["accept *:80"])
        self.assertEqual(len(warnings), 3)
        self.assertIn("accept6 1.2.3.4:*", warnings[0])
        self.assertIn("ignored", warnings[0])

    def test_portZeroClamped(self):
        """Old code refused ':0' and ':0-65535'; Tor clamps the low port to 1."""
        rule = parsePolicy("reject *:0-65535")[0]
        self.assertEqual((rule.portMin, rule.portMax), (1, 65535))
        self.assertEqual((parsePolicy("accept *:0-80")[0].portMin), 1)
        warnings = []
        # ':0' alone is 1-0 in Tor: a rule that matches no port.  We drop it and say so.
        self.assertEqual(parsePolicy("reject *:0", warn=warnings.append), [])
        self.assertIn("no port", warnings[0])

    def test_unicodeDigitsRefused(self):
        """Old code took Arabic-Indic and other Unicode digits as port numbers and masks."""
        for text in ("accept *:\u0668\u0660", "accept *:8\u0660", "reject 10.0.0.0/\u0668:*", "accept *:\uff18\uff10",
                     "accept *:80-\u0669\u0669", "accept 1.2.3.4:\u00b9"):
            self.assertRaises(PolicyParseError, parsePolicy, text)

    def test_allDigitMaskNamesTheRule(self):
        """Old code: '/0032' escaped as ipaddress.AddressValueError.  Tor reads it as /32."""
        self.assertEqual(parsePolicy("reject 10.1.2.3/0032:*")[0].networks[0].prefixlen, 32)
        e = self.assertRaises(PolicyParseError, parsePolicy, "reject 10.1.2.3/00033:*")
        self.assertIn("reject 10.1.2.3/00033:*", str(e))

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.sampled_from(list("0123456789/:.*[]-abcdef,%\u0668\uff10\u00b9 ")
                                    + ["accept ", "reject6 ", "private", "::", "0000", "255.", "ffff:"]),
                    max_size=30).map("".join))
    def test_nearlyValidRulesOnlyRaiseParseError(self, text):
        try:
            parsePolicy(text, warn=lambda message: None)
        except PolicyParseError:
            pass
