"""Root: hosts behind stateful IPv6 firewalls (no NAT66) refuse unsolicited datagrams, and still connect by punching."""

from twisted.trial import unittest

from meshvpn.tools import firewall6
from meshvpn.tools.netns import requireRoot


def muxCounters(agent):
    agent.send({"cmd": "status"})
    before = len(agent.events)
    event = agent.wait(lambda e: e.get("event") == "status" and agent.events.index(e) >= before, 10)
    return event["mux"]


class Firewall6Tests(unittest.TestCase):
    timeout = 180

    def test_unsolicitedRefusedPunchedPairsDirect(self):
        requireRoot(self, tools=("ip", "nft"))
        tb, agents = firewall6.build(self, size=1 << 18)
        # The attack: a datagram nobody asked for, from a stranger on the internet.
        for name in ("firewall6-1", "open6-1"):
            host, port = agents[name].info["candidates"][0]
            self.assertEqual(host, tb.hosts[name].address)
            tb.sendFrom(tb.relayNs, (host, port), b"\x80unsolicited")
        import time

        time.sleep(0.5)
        self.assertNotIn("dropped_unknown", muxCounters(agents["firewall6-1"]))  # the firewall dropped it
        self.assertEqual(muxCounters(agents["open6-1"]).get("dropped_unknown"), 1)  # control: an open host gets it

        result = firewall6._run(tb, agents, (("firewall6-1", "firewall6-2"), ("open6-1", "firewall6-2")), 1 << 18,
                                time.monotonic())
        for row in result["pairs"]:
            self.assertEqual((row["connected"], row["verified"], row["path"]), (True, True, "direct"), row)
