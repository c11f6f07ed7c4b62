"""Tests for the exit's settings and how its parts are built (meshvpn.exit.settings)."""

from twisted.internet import task
from twisted.trial import unittest

from meshvpn.config import resolveSettings
from meshvpn.errors import ConfigError
from meshvpn.exit.settings import buildExit, exitSettings, parseRate
from meshvpn.exit.test.test_dns import TABLE, FakeUpstream


class ExitSettingsTests(unittest.TestCase):
    def resolve(self, **given):
        return resolveSettings(exitSettings(), {k.replace("_", "-"): v for k, v in given.items()}, {})

    def test_defaults(self):
        s = self.resolve()
        self.assertEqual(s["exit_policy"], "")
        self.assertEqual(s["exit_dns"], "system")
        self.assertIsNone(s["bandwidth_rate"])

    def test_rates(self):
        self.assertEqual(parseRate("10M"), 10 * 1024 * 1024)
        self.assertEqual(parseRate("512k"), 512 * 1024)
        self.assertEqual(parseRate("1.5MB"), int(1.5 * 1024 * 1024))
        self.assertEqual(parseRate(1000), 1000)
        self.assertIsNone(parseRate("unlimited"))
        self.assertIsNone(parseRate("0"))
        for bad in ("fast", "-1", "10X", True, -5):
            self.assertRaises(ValueError, parseRate, bad)

    def test_badPolicyNamed(self):
        e = self.assertRaises(ConfigError, self.resolve, exit_policy="accept *:99999")
        self.assertIn("--exit-policy", str(e))
        self.assertIn("99999", str(e))

    def test_dnsUpstream(self):
        self.assertEqual(self.resolve(exit_dns="127.0.0.1:5353")["exit_dns"], ("127.0.0.1", 5353))
        self.assertRaises(ConfigError, self.resolve, exit_dns="dns.example.com:53")

    def test_buildExit(self):
        s = self.resolve(exit_policy="accept *:25", bandwidth_rate="1M", circuit_rate="100K")
        parts = buildExit(task.Clock(), s, ownAddresses=["198.19.0.1"], upstream=FakeUpstream(TABLE))
        self.assertTrue(parts.policy.allows("198.18.0.1", 25))
        self.assertFalse(parts.policy.allows("198.19.0.1", 80))
        self.assertFalse(parts.policy.allows("127.0.0.1", 80))
        self.assertEqual(parts.limiter.nodeBucket.rate, 1024 * 1024)
        self.assertEqual(parts.limiter.circuit(1).bucket.rate, 100 * 1024)
        st = parts.status()
        self.assertTrue(st["policy_summary"].startswith("reject 119,"))
        self.assertEqual(self.successResultOf(parts.resolver.resolve("v4only.example.com")), ["198.18.0.11"])

    def test_ipv6ExitOnlyWhenSaid(self):
        """Tor's IPv6Exit: without exit-ipv6 an IPv6 destination is refused (and not announced); the IPv4 summary stays."""
        off = buildExit(task.Clock(), self.resolve(exit_policy="accept *:80"), upstream=FakeUpstream(TABLE))
        self.assertFalse(off.ipv6)
        self.assertFalse(off.policy.allows("2001:2::1", 80))
        self.assertTrue(off.policy.allows("198.18.0.1", 80))
        on = buildExit(task.Clock(), self.resolve(exit_policy="accept *:80", exit_ipv6="true"), upstream=FakeUpstream(TABLE))
        self.assertTrue(on.ipv6)
        self.assertTrue(on.policy.allows("2001:2::1", 80))
        self.assertEqual(on.policy.summary(), off.policy.summary())
