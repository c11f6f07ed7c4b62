"""Links for real: TCP on loopback, a real relay process, the bench command."""

import json
import os
import sys

from twisted.internet import defer, reactor, task, utils
from twisted.trial import unittest

from meshvpn.errors import LinkError
from meshvpn.identity import NodeIdentity
from meshvpn.tools.benchlink import runLinkBench
from meshvpn.link.manager import LinkManager, LinkTarget
from meshvpn.link.protocol import LinkSettings
from meshvpn.link.transports import TCPTransport
from meshvpn.tools.processes import NodeProcess
from meshvpn.link.test.helpers import cell, linkOnLoopback


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

    @defer.inlineCallbacks
    def test_benchCommandRunsWithTwoProcesses(self):
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, ["-m", "meshvpn", "bench", "link", "--json", "--processes", "--cells", "300"], env=os.environ
        )
        self.assertEqual(code, 0, err)
        result = json.loads(out)
        self.assertEqual((result["cells"], result["processes"]), (300, 2))
        self.assertGreater(result["cells_per_s"], 0)


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


class _PausingSender:
    """Floods a link as a push producer; fires C{firstPause} when the link pauses it."""

    def __init__(self, link):
        self.link = link
        self.paused = False
        self.sent = 0
        self.pauses = 0
        self.firstPause = defer.Deferred()
        link.registerProducer(self, True)

    def pump(self, limit):
        self.limit = limit
        while not self.paused and self.sent < limit:
            self.link.sendCells([cell(self.sent + i) for i in range(64)])
            self.sent += 64

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1
        if not self.firstPause.called:
            self.firstPause.callback(None)

    def resumeProducing(self):
        # Like a circuit with data waiting: send more as soon as allowed.
        self.paused = False
        reactor.callLater(0, self.pump, self.limit)

    def stopProducing(self):
        pass


class BackpressureLoopbackTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_slowReaderPausesTheSender(self):
        """
        A receiver that stops reading makes TCP, then TLS, then the link
        pause the sending circuit's producer: nothing queues without bound.
        """
        # a reader that has stopped, from its link's first moment
        link, incoming, got = yield linkOnLoopback(self, onOpened=lambda link: link.pauseProducing())
        sender = _PausingSender(link)
        sender.pump(limit=200_000)  # ~100 MB if nothing stopped it
        yield sender.firstPause
        # Let TCP drain into the kernel until its buffers are full too: the
        # sender ends up paused for good, having sent a bounded amount.
        stable = 0
        last = -1
        while stable < 20:
            yield task.deferLater(reactor, 0.01, lambda: None)
            stable = stable + 1 if (sender.paused and sender.sent == last) else 0
            last = sender.sent
        self.assertTrue(sender.paused)
        self.assertLess(sender.sent, 200_000)
        print(f"\n    slow reader: sender paused after {sender.sent} cells ({sender.pauses} pauses)")
        self.assertLessEqual(link._queuedCells, link._settings.maxQueuedCells)
        self.assertLessEqual(incoming._heldBytes, incoming._settings.maxHeldBytes)
        sentWhenPaused = sender.sent
        incoming.resumeProducing()
        while len(got) < sentWhenPaused:
            d = defer.Deferred()
            reactor.callLater(0, d.callback, None)
            yield d
        # The resumed sender may have sent more since; what was held arrives whole and in order.
        self.assertGreaterEqual(len(got), sentWhenPaused)
        self.assertEqual(got[:sentWhenPaused], [cell(i) for i in range(sentWhenPaused)])


class BulkReadTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_bothEndsReadInBulk(self):
        """Both ends of a TLS link on loopback read their TCP socket up to BULK_READ a turn (meshvpn/readsize.py)."""
        from meshvpn.readsize import BULK_READ, socketOf

        link, incoming, _ = yield linkOnLoopback(self)
        for end in (link, incoming):
            sock = socketOf(end.transport)
            self.assertIsNotNone(sock)
            self.assertEqual(sock.bufferSize, BULK_READ)
