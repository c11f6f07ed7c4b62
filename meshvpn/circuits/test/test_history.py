"""Browsing history stays off disk: stream targets reach status.json only when the user opts in."""

import json
import os
import random

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from meshvpn.circuits.manager import CircuitManager
from meshvpn.circuits.pathselect import RelayInfo
from meshvpn.control.status import StatusWriter

TARGET = "secret-site.example:443"


class StreamsWithTarget:
    """What a circuit's stream mux reports at the origin: one open stream and where it goes."""

    def status(self):
        return {"bytes_sent": 10, "bytes_received": 20,
                "streams": [{"id": 1, "state": "open", "target": TARGET, "sent": 10, "received": 20}]}


class Circuit:
    streamHandler = StreamsWithTarget()

    def whenClosed(self):
        return defer.Deferred()

    def close(self, reason):
        pass


class HistoryTests(unittest.TestCase):
    def statusFile(self, **kw):
        clock = Clock()
        relays = [RelayInfo(nodeId=bytes([n]) * 32, host=f"10.{n}.0.1", roles=frozenset({"guard", "middle", "exit"}))
                  for n in range(1, 6)]
        manager = CircuitManager(clock, lambda: defer.succeed(relays), lambda path: defer.succeed(Circuit()),
                                 spares=0, rng=random.Random(1))
        self.successResultOf(manager.getCircuit(("secret-site.example", 443), isolation="u"))
        dataDir = self.mktemp()
        os.makedirs(dataDir)
        writer = StatusWriter(clock, dataDir, lambda: {"role": "client"}, **kw)
        writer.addSource("circuits", manager)
        writer.write()
        with open(os.path.join(dataDir, "status.json")) as f:
            return f.read()

    def test_noTargetOnDiskByDefault(self):
        text = self.statusFile()
        self.assertNotIn("secret-site", text)
        [circuit] = json.loads(text)["circuits"]["circuits"]
        self.assertEqual(circuit["streams"][0]["sent"], 10)  # the counters stay

    def test_targetOnDiskWhenAsked(self):
        self.assertIn(TARGET, self.statusFile(history=True))
