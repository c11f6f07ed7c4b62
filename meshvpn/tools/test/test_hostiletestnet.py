"""A hostile guard as a real relay process (`meshvpn testnet --check --hostile guard`): the client survives it, and it reads nothing."""

import time

from twisted.trial import unittest

from meshvpn.control.status import readStatus
from meshvpn.tools.testnet import Testnet


class HostileGuardProcessTests(unittest.TestCase):
    def test_hostileGuardReadsNothing(self):
        """
        The testnet's only guard is a hostile relay process: on each of the
        first circuits the client uses it sends TRUNCATED, forged END,
        CONNECTED, RESOLVED and stream SENDMEs, and keeps what follows.  The
        client closes those circuits and fetches the page byte-exact through
        a later one; the guard's view of every cell the client sent holds
        neither the target nor the request.  (Before the fix the client kept
        a one-hop circuit and the guard read the next BEGIN's target.)
        """
        lines = []
        net = Testnet(lines.append, hostile="guard")
        self.addCleanup(net.stop)
        net.start()
        self.assertTrue(net.check(nbytes=200_000), "\n".join(lines))
        attacked = 0
        deadline = time.monotonic() + 5
        while not attacked and time.monotonic() < deadline:  # status.json is rewritten every second
            attacked = (readStatus(net.hostileNode.dataDir) or {}).get("hostile", {}).get("circuits_attacked", 0)
            time.sleep(0.2)
        self.assertGreaterEqual(attacked, 1, "the hostile guard attacked nothing: the test proves nothing")
        leaked, viewed = net.readable(*net.webAddress)
        self.assertEqual(leaked, [])
        self.assertGreater(viewed, 0)
