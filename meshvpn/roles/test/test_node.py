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


class ReceiveBufferTests(unittest.TestCase):
    def test_growsBeyondTheDefault(self):
        """A burst of DHT answers must not overflow the node's socket (the default holds a few hundred)."""
        import socket

        from meshvpn.ports import growReceiveBuffer

        plain, grown = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(plain.close)
        self.addCleanup(grown.close)
        growReceiveBuffer(grown, 1 << 20)
        before = plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        after = grown.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        with open("/proc/sys/net/core/rmem_max") as f:
            cap = int(f.read())
        self.assertEqual(after, 2 * (1 << 20) if os.geteuid() == 0 else 2 * min(1 << 20, cap))
        self.assertGreaterEqual(after, before)
        growReceiveBuffer(None)  # no socket (a fake reactor's port): nothing to do
