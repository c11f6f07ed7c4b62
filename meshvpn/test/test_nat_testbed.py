"""Root: NAT classification through real nftables NAT boxes, against our STUN server and coturn."""

from twisted.trial import unittest

from meshvpn.test import nattestbed
from meshvpn.test.rootenv import requireRoot


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
