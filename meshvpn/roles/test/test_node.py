"""The Node service in-process: binds its sockets, announces itself in node.json, cleans up on stop."""

import json
import os
import signal

from twisted.internet import defer, reactor
from twisted.trial import unittest

from meshvpn.roles.node import NODE_FILE
from meshvpn.roles import relay
from meshvpn.roles.sigterm import CleanStopOnSIGTERM


class NodeServiceTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_startAnnounceStop(self):
        options = relay.Options()
        dataDir = os.path.abspath(self.mktemp())
        options.parseOptions(["--data-dir", dataDir, "--udp", "127.0.0.1:0", "--listen", "tcp:0:interface=127.0.0.1"])
        node = relay.makeService(options)
        node.privilegedStartService()
        node.startService()
        info = yield node.whenStarted
        self.assertIsInstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), CleanStopOnSIGTERM)
        with open(os.path.join(dataDir, NODE_FILE)) as f:
            onDisk = json.load(f)
        self.assertEqual(onDisk, info)
        self.assertEqual(info["node_id"], node.identity.nodeIdHex)
        udpPort = int(info["udp"].rsplit(":", 1)[1])
        self.assertNotEqual(udpPort, 0)
        self.assertEqual(node.udp.getHost().port, udpPort)
        yield node.stopService()
        self.assertFalse(os.path.exists(os.path.join(dataDir, NODE_FILE)))
        self.assertNotIsInstance(getattr(signal.getsignal(signal.SIGTERM), "__self__", None), CleanStopOnSIGTERM)
        self.assertIsNone(node.udpService.port)
