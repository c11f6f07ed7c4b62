"""A real SOCKS5 client (curl) through the SOCKS server, over loopback only.

There is no circuit here: the stream opener is DirectStreamOpener with an
explicitly permissive policy (loopback is 'private', so the default policy
refuses it, which the last test shows).  What this proves is that a real
application speaks to our SOCKS server, that the name is resolved on the
"exit" side (curl is told --socks5-hostname and the name exists only in the
exit's table), and that 20 MB arrive byte-exact.
"""

import hashlib
import os
import shutil

from twisted.internet import defer, protocol
from twisted.trial import unittest
from twisted.web import server, static

from meshvpn.client.socks import SOCKSService
from meshvpn.exit.connect import ExitConnector
from meshvpn.exit.direct import DirectStreamOpener
from meshvpn.exit.policy import ExitPolicy, defaultExitPolicy
from meshvpn.exit.test.test_connect import TableResolver

CURL = shutil.which("curl")


class _Collect(protocol.ProcessProtocol):
    def __init__(self):
        self.out = bytearray()
        self.err = bytearray()
        self.done = defer.Deferred()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.done.callback(reason.value.exitCode)


class CurlThroughSOCKSTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        if CURL is None:
            raise unittest.SkipTest("curl is not installed")
        from twisted.internet import reactor

        self.reactor = reactor
        root = self.mktemp()
        os.makedirs(root)
        self.payload = os.urandom(20 * 1024 * 1024)
        with open(os.path.join(root, "file.bin"), "wb") as f:
            f.write(self.payload)
        web = reactor.listenTCP(0, server.Site(static.File(root)), interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        self.webPort = web.getHost().port

    @defer.inlineCallbacks
    def socks(self, policy):
        connector = ExitConnector(self.reactor, TableResolver({"web.test.invalid": ["127.0.0.1"]}), policy)
        svc = SOCKSService(self.reactor, DirectStreamOpener(connector, connector.resolver), ("127.0.0.1", 0))
        svc.startService()
        self.addCleanup(svc.stopService)
        yield svc.whenListening
        return svc

    @defer.inlineCallbacks
    def curl(self, svc, url):
        proc = _Collect()
        args = [CURL, "-sS", "--max-time", "60", "--socks5-hostname", "127.0.0.1:%d" % svc.port.getHost().port, "-o", "-", url]
        self.reactor.spawnProcess(proc, CURL, args, env={})
        code = yield proc.done
        return code, bytes(proc.out), bytes(proc.err)

    @defer.inlineCallbacks
    def test_curlDownloads20MBByteExact(self):
        svc = yield self.socks(ExitPolicy.fromText("accept *:*"))
        code, out, err = yield self.curl(svc, f"http://web.test.invalid:{self.webPort}/file.bin")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out), len(self.payload))
        self.assertEqual(hashlib.sha256(out).digest(), hashlib.sha256(self.payload).digest())

    @defer.inlineCallbacks
    def test_curlSeesNotAllowed(self):
        # The default policy refuses loopback: curl gets the SOCKS 0x02 reply.
        svc = yield self.socks(defaultExitPolicy())
        code, out, err = yield self.curl(svc, f"http://web.test.invalid:{self.webPort}/file.bin")
        self.assertEqual(code, 97, err)  # CURLE_PROXY
        self.assertIn(b"(2)", err)  # curl names the SOCKS reply code: 2, not allowed by ruleset
