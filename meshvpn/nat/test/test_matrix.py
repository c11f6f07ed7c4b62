"""Root: every pair of NAT types connected by the datagram link through real nftables NATs, 1 MB each way."""

from twisted.trial import unittest

from meshvpn.tools import natmatrix as matrix
from meshvpn.tools.netns import requireRoot


class MatrixTests(unittest.TestCase):
    timeout = 420

    def test_everyPairConnects(self):
        """
        Direct wherever possible in principle, through our relay's TURN
        server otherwise, through a TURN allocation over TCP wherever one
        side's UDP is blocked; 1 MiB each way, verified byte for byte.
        """
        requireRoot(self)
        result = matrix.runMatrix(self, size=1 << 20)
        rows = result["pairs"]
        self.assertEqual(len(rows), 36)
        bad = [r for r in rows if not (r["connected"] and r["verified"] and r["path"] == r["expected_path"])]
        self.assertEqual(bad, [])
        self.assertEqual({(r["a"], r["b"]) for r in rows if r["path"] == "relay"},
                         {("port-restricted", "symmetric"), ("symmetric", "port-restricted"), ("symmetric", "symmetric")})
        self.assertEqual({(r["a"], r["b"]) for r in rows if r["path"] == "turn-tcp"},
                         {(a, b) for a in matrix.PAIR_TYPES for b in matrix.PAIR_TYPES if "udp-blocked" in (a, b)})


class CoturnTests(unittest.TestCase):
    timeout = 120

    def test_relayThroughCoturn(self):
        """
        Our TURN client against stock coturn (long-term credentials):
        two symmetric-NAT peers that cannot punch connect through a coturn
        allocation (ALLOCATE, CREATE-PERMISSION, SEND/DATA, CHANNEL-BIND,
        ChannelData) and move 1 MiB each way.
        """
        requireRoot(self, tools=("ip", "nft", "turnserver"))
        result = matrix.runMatrix(self, types=("symmetric",), size=1 << 20, coturn=True)
        (row,) = result["pairs"]
        self.assertEqual((row["connected"], row["verified"], row["path"]), (True, True, "relay"), row)


class BenchTests(unittest.TestCase):
    timeout = 420

    def test_benchNatRuns(self):
        """`meshvpn bench nat --json` prints one JSON object with pairs and classified (tiny transfer)."""
        import json
        import subprocess
        import sys

        requireRoot(self)
        out = subprocess.run(
            [sys.executable, "-m", "meshvpn", "bench", "nat", "--json", "--bytes", "20000"],
            capture_output=True, timeout=400,
        )
        self.assertEqual(out.returncode, 0, out.stderr.decode(errors="replace")[-2000:])
        result = json.loads(out.stdout)
        self.assertEqual(len(result["pairs"]), 36)
        for row in result["pairs"]:
            self.assertEqual(set(row) >= {"a", "b", "path", "connected", "connect_time_s"}, True)
        blocked = [r for r in result["pairs"] if "udp-blocked" in (r["a"], r["b"])]
        self.assertEqual(len(blocked), 11)
        self.assertEqual({(r["connected"], r["path"]) for r in blocked}, {(True, "turn-tcp")})
        self.assertEqual(len(result["classified"]), 12)
        for row in result["classified"]:
            self.assertEqual(set(row), {"host", "expected", "detected"})


class CoturnOperationsTests(unittest.TestCase):
    timeout = 120

    def test_everyOperationAgainstCoturn(self):
        """
        From behind a symmetric NAT, our TURN client against stock coturn:
        ALLOCATE (401 then long-term credentials), REFRESH, CREATE-PERMISSION,
        SEND -> peer -> DATA indication, CHANNEL-BIND, ChannelData both ways,
        release (REFRESH 0).
        """
        import json
        import subprocess
        import sys

        from meshvpn.tools import nattestbed

        requireRoot(self, tools=("ip", "nft", "turnserver"))
        tb = nattestbed.build(self, natTypes=("symmetric", "no-nat"), meshvpnStun=False)
        tb.startCoturn(extraArgs=["--lt-cred-mech", "--user", f"{matrix.COTURN_USER}:{matrix.COTURN_PASSWORD}",
                                  "--realm", matrix.COTURN_REALM, "--fingerprint", "--no-tcp-relay"])
        peer = tb.hosts["no-nat"]
        echo = tb.popen(peer, [sys.executable, "-m", "meshvpn.tools.turncheck", "--echo", "6000"],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.assertIn(b"ready", echo.stdout.readline())
        server = nattestbed.COTURN_PRIMARY
        out = tb.run("symmetric", sys.executable, "-m", "meshvpn.tools.turncheck", "--server", f"{server[0]}:{server[1]}",
                     "--user", matrix.COTURN_USER, "--password", matrix.COTURN_PASSWORD,
                     "--peer", f"{peer.address}:6000", timeout=60)
        result = json.loads(out)
        self.assertEqual(result["relayed"][0], server[0])
        self.assertEqual(result["mapped"][0], tb.hosts["symmetric"].publicAddress)
        self.assertGreater(result["refreshed_lifetime"], 0)  # coturn rounds 300 up to its minimum, 600
        self.assertTrue(result["echo_via_indication"])
        self.assertEqual(result["channel"], 0x4000)
        self.assertTrue(result["echo_via_channel"])
        self.assertEqual(result["counters"]["rx_channel"], 1)
        self.assertEqual(result["counters"]["tx_channel"], 1)
        self.assertTrue(result["released"])
