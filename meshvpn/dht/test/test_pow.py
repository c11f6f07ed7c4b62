"""Proof of work bound to the identity key: solving, checking, caching in the data dir."""

import json
import os
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from meshvpn.dht import pow
from meshvpn.identity import NodeIdentity


class WorkTests(unittest.TestCase):
    def test_solveAndCheck(self):
        key = NodeIdentity.generate().identityPublicKey
        nonce = pow.solve(key, 12)
        self.assertTrue(pow.checkWork(key, nonce, 12))
        self.assertGreaterEqual(pow.workBits(key, nonce), 12)
        # bound to the key: the same nonce proves nothing for another one (but by 2^-12 chance)
        other = NodeIdentity.generate().identityPublicKey
        self.assertEqual(pow.checkWork(other, nonce, 12), pow.workBits(other, nonce) >= 12)
        self.assertFalse(pow.checkWork(key, b"\x00" * 7, 12))
        self.assertTrue(pow.checkWork(key, pow.NO_WORK, 0))

    def test_defaultCostIsAboutHalfASecond(self):
        """The default (20 bits) costs 2^20 hashes on average; one hash here is about 0.5 us."""
        key = NodeIdentity.generate().identityPublicKey
        started = time.perf_counter()
        pow.solve(key, 14)
        perHash = (time.perf_counter() - started) / 2**14
        self.assertEqual(pow.DEFAULT_BITS, 20)
        self.assertLess(perHash * 2**pow.DEFAULT_BITS, 10.0)  # generous: loaded test machines

    def test_cachedInDataDir(self):
        d = self.mktemp()
        os.makedirs(d)
        key = NodeIdentity.generate().identityPublicKey
        nonce = pow.loadOrSolve(d, key, 10)
        path = os.path.join(d, pow.WORK_FILE)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(pow.loadOrSolve(d, key, 10), nonce)
        with open(path) as f:
            self.assertEqual(json.load(f)["nonce"], nonce.hex())
        # another key, a harder setting or a damaged file: solved again, never trusted
        other = NodeIdentity.generate().identityPublicKey
        self.assertTrue(pow.checkWork(other, pow.loadOrSolve(d, other, 10), 10))
        with open(path, "w") as f:
            f.write("{not json")
        self.assertTrue(pow.checkWork(key, pow.loadOrSolve(d, key, 10), 10))


class ServiceWorkTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_relaySolvesOnceThenStartsFromTheCache(self):
        from meshvpn.dht.rpc import DHTConfig
        from meshvpn.dht.service import DHTService
        from meshvpn.roles.node import Node

        dataDir = os.path.abspath(self.mktemp())
        config = DHTConfig(powBits=12, exemptLoopback=True)
        for _ in range(2):
            node = Node(reactor, "relay", {"data_dir": dataDir, "udp": ("127.0.0.1", 0)})
            dht = DHTService(node, (), config=config)
            dht.setServiceParent(node)
            node.startService()
            yield dht.workReady
            yield dht.joined
            self.assertTrue(pow.checkWork(node.identity.identityPublicKey, dht.dht.work, 12))
            yield node.stopService()
        with open(os.path.join(dataDir, pow.WORK_FILE)) as f:
            self.assertEqual(bytes.fromhex(json.load(f)["nonce"]), dht.dht.work)
