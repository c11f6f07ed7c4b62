"""The one host:port codec and the one-shot observer."""

from hypothesis import given, strategies as st
from twisted.trial import unittest

from meshvpn.hostport import HostPortError, formatHostPort, parseIPPort, splitHostPort
from meshvpn.observer import OneShotObserver


class HostPortTests(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(splitHostPort("example.com:443"), ("example.com", 443))
        self.assertEqual(splitHostPort("[::1]:80"), ("::1", 80))
        self.assertEqual(parseIPPort("127.0.0.1:0"), ("127.0.0.1", 0))
        self.assertEqual(parseIPPort("9000", defaultHost="0.0.0.0"), ("0.0.0.0", 9000))
        self.assertEqual(formatHostPort("::1", 80), "[::1]:80")

    def test_refused(self):
        for bad in ("", ":80", "host", "::1:80", "[::1]80", "[nope]:80", "h:65536", "h:-1", "h:\u0663", "h:0"):
            self.assertRaises(HostPortError, splitHostPort, bad)
        self.assertRaises(HostPortError, parseIPPort, "example.com:80")

    @given(st.text(max_size=40))
    def test_anyTextEitherParsesOrSaysWhy(self, text):
        try:
            host, port = splitHostPort(text)
        except HostPortError:
            return
        self.assertTrue(1 <= port <= 65535)
        self.assertEqual(splitHostPort(formatHostPort(host, port)), (host, port))


class OneShotObserverTests(unittest.TestCase):
    def test_beforeAndAfter(self):
        o = OneShotObserver()
        early = o.whenFired()
        o.fire("done")
        o.fire("again")
        self.assertEqual(self.successResultOf(early), "done")
        self.assertEqual(self.successResultOf(o.whenFired()), "done")
        self.assertTrue(o.fired)
