"""Links for real: TCP on loopback, a real relay process, the bench command."""

import json
import os
import sys

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from meshvpn.errors import LinkError
from meshvpn.identity import NodeIdentity
from meshvpn.link.bench import runLinkBench
from meshvpn.link.manager import LinkManager, LinkTarget
from meshvpn.link.protocol import LinkSettings
from meshvpn.link.transports import TCPTransport
from meshvpn.processes import NodeProcess
from meshvpn.test.linkhelpers import cell


class LoopbackTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_twoNodesExchange100kCells(self):
        """100,000 cells each way at once over one TLS link on loopback, in order; prints cells/s."""
        r = yield defer.Deferred.fromCoroutine(runLinkBench(reactor, 100_000, 64, bidirectional=True))
        self.assertEqual(r["cells"], 200_000)
        self.assertTrue(r["in_order"])
        print(f"\n    loopback TLS link: {r['cells_per_s']} cells/s, {r['mbps']} Mbps, handshake {r['handshake_ms']} ms")

    @defer.inlineCallbacks
    def test_benchCommandRuns(self):
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "meshvpn", "bench", "link", "--json", "--cells", "300"], env=os.environ
        )
        self.assertEqual(code, 0, err)
        result = json.loads(out)
        self.assertEqual(result["cells"], 300)
        self.assertGreater(result["cells_per_s"], 0)
        self.assertGreater(result["mbps"], 0)


class RelayProcessTests(unittest.TestCase):
    """A real ``twistd meshvpn-relay`` accepts links on its stream port."""

    timeout = 60

    def setUp(self):
        self.relay = NodeProcess("relay", os.path.abspath(self.mktemp()))
        self.addCleanup(self.relay.stop)
        self.relay.start()
        self.info = self.relay.waitReady()
        self.manager = LinkManager(
            reactor, NodeIdentity.generate(), LinkSettings(authenticate=False), transports={"tls": TCPTransport()}
        )
        self.addCleanup(self.manager.stopService)

    @defer.inlineCallbacks
    def test_linkToRelay(self):
        nodeId = bytes.fromhex(self.info["node_id"])
        link = yield self.manager.getLink(LinkTarget(nodeId, (("tls", self.info["stream"]),)))
        self.assertEqual(link.peerId, nodeId)
        self.assertTrue(link.sendCells([cell(i) for i in range(10)]))
        wrong = LinkTarget(NodeIdentity.generate().nodeId, (("tls", self.info["stream"]),))
        e = yield self.assertFailure(self.manager.getLink(wrong), LinkError)
        self.assertIn("not the expected node id", str(e))
        self.assertEqual(len(self.manager.links()), 1)
