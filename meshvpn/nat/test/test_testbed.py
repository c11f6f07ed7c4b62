"""Root: NAT classification through real nftables NAT boxes, against our STUN server and coturn."""

import subprocess

from twisted.trial import unittest

from meshvpn.tools import nattestbed
from meshvpn.tools.netns import requireRoot


class ClassificationTests(unittest.TestCase):
    def test_everyNATTypeAgainstMeshvpnAndCoturn(self):
        requireRoot(self, tools=("ip", "nft", "turnserver"))
        tb = nattestbed.build(self, coturn=True)
        for label, server in (("meshvpn", nattestbed.STUN_PRIMARY), ("coturn", nattestbed.COTURN_PRIMARY)):
            rows = tb.classify(server)
            got = {r["host"]: r["detected"] for r in rows}
            want = {r["host"]: r["expected"] for r in rows}
            self.assertEqual(got, want, f"against {label}: " + repr([(r["host"], r["report"]) for r in rows if r["detected"] != r["expected"]]))
            for r in rows:
                rep = r["report"]
                if r["expected"] == "udp-blocked":
                    continue
                # the mapped address is the box's WAN address (or our own)
                self.assertEqual(rep["mapped_address"].split(":")[0], tb.hosts[r["host"]].publicAddress)
                self.assertEqual(rep["rfc5780_server"], f"{server[0]}:{server[1]}")
                if rep["nat"]:
                    self.assertIs(rep["hairpinning"], nattestbed.HAIRPINNING.get(r["host"], False), r["host"])

        self.coturnClientAgrees(tb)

    def coturnClientAgrees(self, tb):
        """The other direction of interop: coturn's NAT discovery client against our server."""
        expected = {
            "full-cone": ("Endpoint Independent Mapping", "Endpoint Independent Filtering"),
            "address-restricted": ("Endpoint Independent Mapping", "Address Dependent Filtering"),
            "port-restricted": ("Endpoint Independent Mapping", "Address and Port Dependent Filtering"),
            "symmetric": ("Address and Port Dependent Mapping", "Address and Port Dependent Filtering"),
        }
        host, port = nattestbed.STUN_PRIMARY
        argv = ["turnutils_natdiscovery", "-m", "-f", "-p", str(port), host]
        procs = {h: tb.popen(h, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for h in expected}
        for h, p in procs.items():
            out = p.communicate(timeout=120)[0].decode(errors="replace")
            for phrase in expected[h]:
                self.assertIn(f"NAT with {phrase}!", out, h)

    def test_classifiedMatrixForBench(self):
        requireRoot(self)
        rows = nattestbed.classifiedMatrix(natTypes=("port-restricted", "udp-blocked"))
        self.assertEqual(
            rows,
            [
                {"host": "port-restricted", "expected": "port-restricted", "detected": "port-restricted", "server": "meshvpn"},
                {"host": "udp-blocked", "expected": "udp-blocked", "detected": "udp-blocked", "server": "meshvpn"},
            ],
        )
