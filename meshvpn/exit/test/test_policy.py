"""Tests for meshvpn.exit.policy: Tor's syntax, first match wins, defaults, summaries."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from meshvpn.exit.policy import (
    DEFAULT_REJECT_PORTS,
    ExitPolicy,
    PolicyParseError,
    defaultExitPolicy,
    isPrivate,
    parseRule,
    parseSummary,
    summaryAllows,
)
from meshvpn.interfaces import IExitPolicy

# (policy text, address, port, expected verdict)
CASES = [
    # Tor manual: "accept 18.7.22.69:*,reject 18.0.0.0/8:*,accept *:*" rejects
    # MIT except web.mit.edu and accepts anything else.
    ("accept 18.7.22.69:*,reject 18.0.0.0/8:*,accept *:*", "18.7.22.69", 80, True),
    ("accept 18.7.22.69:*,reject 18.0.0.0/8:*,accept *:*", "18.7.22.70", 80, False),
    ("accept 18.7.22.69:*,reject 18.0.0.0/8:*,accept *:*", "18.255.0.1", 443, False),
    ("accept 18.7.22.69:*,reject 18.0.0.0/8:*,accept *:*", "19.0.0.1", 443, True),
    ("accept 18.7.22.69:*,reject 18.0.0.0/8:*,accept *:*", "2001:db8::1", 443, True),
    # Tor manual: "reject6 [FC00::]/7:*" rejects what shares FC00::'s top 7 bits.
    ("reject6 [FC00::]/7:*", "fd12::1", 80, False),
    ("reject6 [FC00::]/7:*", "fe00::1", 80, True),
    ("reject6 [FC00::]/7:*", "10.0.0.1", 80, True),
    # Tor manual: "accept6 [C000::]/3:*" accepts what shares C000::'s top 3 bits.
    ("accept6 [C000::]/3:*,reject *:*", "c123::1", 80, True),
    ("accept6 [C000::]/3:*,reject *:*", "dfff::1", 80, True),
    ("accept6 [C000::]/3:*,reject *:*", "e000::1", 80, False),
    ("accept6 [C000::]/3:*,reject *:*", "2001:db8::1", 80, False),
    # Tor manual: "accept 127.0.0.1:80,reject private:*" allows HTTP to
    # 127.0.0.1 and blocks all other connections to internal networks.
    ("accept 127.0.0.1:80,reject private:*", "127.0.0.1", 80, True),
    ("accept 127.0.0.1:80,reject private:*", "127.0.0.1", 81, False),
    ("accept 127.0.0.1:80,reject private:*", "192.168.1.1", 80, False),
    ("accept 127.0.0.1:80,reject private:*", "198.18.0.1", 80, True),
    # Tor's old manual: "reject 127.0.0.1:*,reject 192.168.1.0/24:*,accept *:*"
    ("reject 127.0.0.1:*,reject 192.168.1.0/24:*,accept *:*", "192.168.1.77", 22, False),
    ("reject 127.0.0.1:*,reject 192.168.1.0/24:*,accept *:*", "192.168.2.77", 22, True),
    # torrc.sample: "accept *:6660-6667,reject *:*" allows irc ports but no more.
    ("accept *:6660-6667,reject *:*", "198.18.1.1", 6660, True),
    ("accept *:6660-6667,reject *:*", "198.18.1.1", 6667, True),
    ("accept *:6660-6667,reject *:*", "198.18.1.1", 6668, False),
    ("accept *:6660-6667,reject *:*", "::2", 6665, True),
    # *4 and *6 only match their family; "*" both.
    ("reject *4:*", "1.2.3.4", 80, False),
    ("reject *4:*", "2001:db8::1", 80, True),
    ("reject *6:*", "2001:db8::1", 80, False),
    ("reject *6:*", "1.2.3.4", 80, True),
    ("reject *:*", "2001:db8::1", 80, False),
    ("accept6 *:80,reject *:*", "2001:db8::1", 80, True),
    ("accept6 *:80,reject *:*", "198.18.0.1", 80, False),
    # Dotted masks, a port omitted means every port.
    ("reject 10.0.0.0/255.0.0.0,accept *:*", "10.9.9.9", 1, False),
    ("reject 10.0.0.0/255.255.0.0:22,accept *:*", "10.0.9.9", 22, False),
    ("reject 10.0.0.0/255.255.0.0:22,accept *:*", "10.1.9.9", 22, True),
    ("reject 10.0.0.0/255.255.0.0:22,accept *:*", "10.0.9.9", 21, True),
    ("reject 10.0.0.0/255.255.0.0:22", "10.0.9.9", 22, False),
    # Host bits under the mask are ignored, as in Tor.
    ("reject 10.1.2.3/8:*", "10.200.0.1", 80, False),
    # First match wins.
    ("accept *:80,reject *:80", "198.18.0.1", 80, True),
    ("reject *:80,accept *:80", "198.18.0.1", 80, False),
    # No rule matched: accepted.
    ("reject 1.1.1.1:*", "1.1.1.2", 80, True),
    # IPv4-mapped IPv6 cannot dodge IPv4 rules.
    ("reject 10.0.0.0/8:*", "::ffff:10.0.0.1", 80, False),
    # Bracketed single IPv6 host and port range.
    ("reject [2001:db8::1]:100-200,accept *:*", "2001:db8::1", 150, False),
    ("reject [2001:db8::1]:100-200,accept *:*", "2001:db8::1", 201, True),
    ("reject [2001:db8::1]:100-200,accept *:*", "2001:db8::2", 150, True),
]

BAD_RULES = [
    "",
    "allow *:*",
    "accept",
    "accept *:65536",
    "accept *:0-0",
    "accept *:80-70",
    "accept *:8a",
    "accept *:80-",
    "accept 1.2.3.4/33:*",
    "accept 1.2.3.4/255.0.255.0:*",
    "accept 1.2.3.4/0.0.0.255:*",
    "accept 2001:db8::1:*",
    "accept [2001:db8::1:*",
    "accept *4/8:*",
    "accept private/8:*",
    "accept private",
    "accept */15:*",
    "reject6 */:*",
    "reject 8.8.8.8/-1:*",
    "reject 1.2.3.4:-1",
    "accept6 **:*",
    "accept 1.2.3.4/:*",
    "accept [::1]x:80",
    "accept example.com:80",
    "accept *:* extra",
    "accept 1.2.3.4x",
    "accept [::1]/129:*",
]


# Tor ignores these with a warning and keeps parsing: parseRule returns None.
IGNORED_RULES = ["accept6 1.2.3.4:*", "reject6 2.4.6.0/24:*", "accept6 *4:*", "reject6 *4:*", "accept *:0"]


class PolicyTableTests(unittest.TestCase):
    def test_interface(self):
        self.assertTrue(verifyObject(IExitPolicy, ExitPolicy([])))

    def test_cases(self):
        failures = []
        for text, address, port, expected in CASES:
            verdict = ExitPolicy.fromText(text).allows(address, port)
            if verdict != expected:
                failures.append((text, address, port, expected, verdict))
        self.assertEqual(failures, [])

    def test_badRules(self):
        for text in BAD_RULES:
            with self.assertRaises(PolicyParseError, msg=text):
                parseRule(text)

    def test_ignoredRules(self):
        for text in IGNORED_RULES:
            warnings = []
            self.assertIsNone(parseRule(text, warn=warnings.append), text)
            self.assertEqual(len(warnings), 1, text)

    def test_bracketedIPv4AsTor(self):
        # Tor's parser tries IPv6 then IPv4 inside brackets, so [1.2.3.4] is 1.2.3.4.
        self.assertFalse(ExitPolicy.fromText("reject [1.2.3.4]:*").allows("1.2.3.4", 80))

    def test_errorNamesRule(self):
        e = self.assertRaises(PolicyParseError, parseRule, "accept *:99999")
        self.assertIn("accept *:99999", str(e))

    def test_whitespace(self):
        self.assertEqual(parseRule("  reject\t10.0.0.0/8:*  ").networks[0].prefixlen, 8)

    def test_commentsAndNewlines(self):
        p = ExitPolicy.fromText("# web only\naccept *:80 # http\n accept *:443,\nreject *:*\n")
        self.assertEqual([r.text for r in p.rules], ["accept *:80", "accept *:443", "reject *:*"])

    def test_notTCPRefused(self):
        self.assertFalse(ExitPolicy.fromText("accept *:*").allows("198.18.0.1", 53, "udp"))

    def test_garbageTargetRefused(self):
        p = ExitPolicy.fromText("accept *:*")
        self.assertFalse(p.allows("example.com", 80))
        self.assertFalse(p.allows("198.18.0.1", 0))
        self.assertFalse(p.allows("198.18.0.1", 70000))


class DefaultPolicyTests(unittest.TestCase):
    def setUp(self):
        self.policy = defaultExitPolicy(ownAddresses=["198.19.7.7", "2001:db8::7"])

    def test_privateRejected(self):
        for address in [
            "0.1.2.3",
            "169.254.1.1",
            "127.0.0.1",
            "127.9.9.9",
            "192.168.0.1",
            "10.1.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "::1",
            "::",
            "fc00::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ]:
            self.assertFalse(self.policy.allows(address, 443), address)
            self.assertTrue(isPrivate(address), address)

    def test_ownAddressesRejected(self):
        self.assertFalse(self.policy.allows("198.19.7.7", 443))
        self.assertFalse(self.policy.allows("2001:db8::7", 443))
        self.assertTrue(self.policy.allows("198.19.7.8", 443))

    def test_testInternetAccepted(self):
        # 198.18.0.0/15 is where the test "internet" lives: never rejected.
        for address in ("198.18.0.1", "198.19.255.254"):
            self.assertTrue(self.policy.allows(address, 80))
            self.assertFalse(isPrivate(address))
        self.assertTrue(self.policy.allows("172.32.0.1", 80))
        self.assertTrue(self.policy.allows("2001:db8::1", 443))

    def test_defaultPortsRejected(self):
        for lo, hi in DEFAULT_REJECT_PORTS:
            for port in {lo, hi, (lo + hi) // 2}:
                self.assertFalse(self.policy.allows("198.18.0.1", port), port)
            self.assertTrue(self.policy.allows("198.18.0.1", hi + 1))
        self.assertTrue(self.policy.allows("198.18.0.1", 24))

    def test_operatorRulesBeforeDefaults(self):
        p = defaultExitPolicy("accept *:25,accept 127.0.0.1:80")
        self.assertTrue(p.allows("198.18.0.1", 25))
        # Private rejects come first, like Tor's ExitPolicyRejectPrivate.
        self.assertFalse(p.allows("127.0.0.1", 80))

    def test_operatorCanAllowPrivate(self):
        p = defaultExitPolicy("accept 127.0.0.1:80", rejectPrivate=False)
        self.assertTrue(p.allows("127.0.0.1", 80))

    def test_allowsResolved(self):
        self.assertEqual(
            self.policy.allowsResolved(["10.0.0.1", "198.18.0.5", "::1", "2001:db8::5"], 443),
            ["198.18.0.5", "2001:db8::5"],
        )
        self.assertEqual(self.policy.allowsResolved(["127.0.0.1"], 80), [])
        self.assertEqual(self.policy.allowsResolved(["198.18.0.5"], 25), [])

    def test_allowsAddress(self):
        self.assertTrue(self.policy.allowsAddress("198.18.0.5"))
        self.assertFalse(self.policy.allowsAddress("127.0.0.1"))
        self.assertFalse(self.policy.allowsAddress("bogus"))
        self.assertTrue(ExitPolicy.fromText("reject *:1-65534").allowsAddress("1.2.3.4"))
        self.assertFalse(ExitPolicy.fromText("reject *:1-65534,reject *:65535").allowsAddress("1.2.3.4"))

    def test_summary(self):
        self.assertEqual(
            self.policy.summary(),
            "reject 25,119,135-139,445,563,1214,4661-4666,6346-6429,6699,6881-6999",
        )
        self.assertEqual(self.policy.summary(6), self.policy.summary(4))


class SummaryTests(unittest.TestCase):
    def test_webOnly(self):
        p = ExitPolicy.fromText("accept *:80,accept *:443,reject *:*")
        self.assertEqual(p.summary(), "accept 80,443")
        self.assertTrue(summaryAllows(p.summary(), 443))
        self.assertFalse(summaryAllows(p.summary(), 22))

    def test_partialRulesSkipped(self):
        # A reject of one network leaves the port open elsewhere; an accept of
        # one host does not open a port everywhere.
        p = ExitPolicy.fromText("reject 18.0.0.0/8:80,accept 1.2.3.4:22,accept *:80,reject *:*")
        self.assertEqual(p.summary(), "accept 80")

    def test_familySpecific(self):
        p = ExitPolicy.fromText("accept6 *:22,accept *4:80,reject *:*")
        self.assertEqual(p.summary(4), "accept 80")
        self.assertEqual(p.summary(6), "accept 22")

    def test_nothing(self):
        self.assertEqual(ExitPolicy.fromText("reject *:*").summary(), "reject 1-65535")
        self.assertFalse(summaryAllows("reject 1-65535", 80))

    def test_everything(self):
        self.assertEqual(ExitPolicy([]).summary(), "accept 1-65535")

    def test_malformedSummaryAllowsNothing(self):
        for bad in ["", "accept", "accept 0", "accept 5-1", "permit 80", "accept 80 443", "accept 1-x", None, "accept 999999"]:
            self.assertFalse(summaryAllows(bad, 80), bad)
        self.assertRaises(PolicyParseError, parseSummary, "accept 1," + "2," * 3000)


ports = st.integers(1, 65535)
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


class PolicyPropertyTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=80))
    def test_parserNeverCrashes(self, text):
        try:
            ExitPolicy.fromText(text)
        except PolicyParseError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(["accept", "reject", "accept6", "reject6"]),
        st.sampled_from(["*", "*4", "*6", "private", "1.2.3.4", "1.2.3.0/24", "[2001:db8::]/32", "10.0.0.0/255.0.0.0"]),
        st.one_of(st.just(""), st.just(":*"), ports.map(lambda p: f":{p}")),
    )
    def test_wellFormedParse(self, action, addr, port):
        text = f"{action} {addr}{port}"
        if addr == "private" and not port:
            # Tor requires a port after 'private'.
            self.assertRaises(PolicyParseError, parseRule, text)
            return
        rule = parseRule(text, warn=lambda message: None)
        if rule is None:
            # Tor ignores IPv4 forms with accept6/reject6 (with a warning).
            self.assertTrue(action.endswith("6") and ("." in addr or addr == "*4"), text)
        else:
            self.assertEqual(rule.accept, action.startswith("accept"))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), ports, ports), max_size=8), ports, addresses)
    def test_summaryAgreesWithPolicyForAllAddressRules(self, spec, port, address):
        rules = ",".join(f"{'accept' if a else 'reject'} *:{min(lo, hi)}-{max(lo, hi)}" for a, lo, hi in spec)
        p = ExitPolicy.fromText(rules)
        family = 6 if ":" in address else 4
        self.assertEqual(summaryAllows(p.summary(family), port), p.allows(address, port))

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=40))
    def test_summaryParserNeverCrashes(self, text):
        summaryAllows(text, 80)
