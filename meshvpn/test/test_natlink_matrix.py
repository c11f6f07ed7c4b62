"""Root: every pair of NAT types connected by the datagram link through real nftables NATs, 1 MB each way."""

from twisted.trial import unittest

from meshvpn.nat import matrix
from meshvpn.test.rootenv import requireRoot


class MatrixTests(unittest.TestCase):
    timeout = 240

    def test_everyPairConnects(self):
        """
        Direct wherever possible in principle, through our relay's TURN
        server otherwise; 1 MiB each way, verified byte for byte.
        """
        requireRoot(self)
        result = matrix.runMatrix(self, size=1 << 20)
        rows = result["pairs"]
        self.assertEqual(len(rows), 25)
        bad = [r for r in rows if not (r["connected"] and r["verified"] and r["path"] == r["expected_path"])]
        self.assertEqual(bad, [])
        self.assertEqual({(r["a"], r["b"]) for r in rows if r["path"] == "relay"},
                         {("port-restricted", "symmetric"), ("symmetric", "port-restricted"), ("symmetric", "symmetric")})


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
    timeout = 240

    def test_benchNatRuns(self):
        """`meshvpn bench nat --json` prints one JSON object with pairs and classified (tiny transfer)."""
        import json
        import subprocess
        import sys

        requireRoot(self)
        out = subprocess.run(
            [sys.executable, "-m", "meshvpn", "bench", "nat", "--json", "--bytes", "20000"],
            capture_output=True, timeout=200,
        )
        self.assertEqual(out.returncode, 0, out.stderr.decode(errors="replace")[-2000:])
        result = json.loads(out.stdout)
        self.assertEqual(len(result["pairs"]), 25)
        for row in result["pairs"]:
            self.assertEqual(set(row) >= {"a", "b", "path", "connected", "connect_time_s"}, True)
        self.assertEqual(len(result["classified"]), 10)
        for row in result["classified"]:
            self.assertEqual(set(row), {"host", "expected", "detected"})
