"""An exit never reaches its own host: every address of every local interface
(IPv4 and IPv6) and the public address STUN learned are refused for streams,
DNS answers and packets, and the set is refreshed while the exit runs."""

import ipaddress
import json
import os
import subprocess
import sys
import time

from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from meshvpn.errors import ResolveFailed, StreamRefused
from meshvpn.exit.connect import ExitConnector
from meshvpn.exit.dns import ExitResolver
from meshvpn.exit.packetexit import packetAllowed
from meshvpn.exit.policy import defaultExitPolicy
from meshvpn.localaddrs import LocalAddresses, interfaceAddresses
from meshvpn.onion.endreasons import EndReason
from meshvpn.tun.packets import PROTO_TCP, PROTO_UDP, IPv4, ipBytes

OWN = ("192.0.2.2", "fd00::2", "fe80::fc:ff:fe00:1")


def packet(dst, dport, proto=PROTO_TCP):
    p = IPv4()
    p.proto, p.src, p.dst, p.sport, p.dport, p.icmpType = proto, ipBytes("100.64.0.2"), ipBytes(dst), 40000, dport, None
    p.fragOffset = 0
    return p


class OwnAddressesInThePolicy(unittest.TestCase):
    def setUp(self):
        self.interfaces = list(OWN)
        self.local = LocalAddresses(task.Clock(), lambda: self.interfaces)
        self.policy = defaultExitPolicy("", localAddresses=self.local)

    def test_everyPortOfEveryOwnAddress(self):
        for address in OWN + ("::ffff:192.0.2.2",):
            for port in (22, 80, 443, 8080):
                self.assertFalse(self.policy.allows(address, port), (address, port))
        self.assertTrue(self.policy.allows("192.0.2.3", 22))
        self.assertTrue(self.policy.allows("2001:db8::3", 443))

    def test_newAddressRefusedAfterRefresh(self):
        self.interfaces.append("203.0.113.50")
        self.assertTrue(self.policy.allows("203.0.113.50", 22))
        self.local.refresh()
        self.assertFalse(self.policy.allows("203.0.113.50", 22))

    def test_learnedPublicAddress(self):
        self.local.learn(["198.51.100.20"])
        self.assertFalse(self.policy.allows("198.51.100.20", 443))

    def test_beginToOwnAddressNeverConnects(self):
        reactor = MemoryReactorClock()
        connector = ExitConnector(reactor, ExitResolver(reactor, None, self.policy), self.policy)
        failure = self.failureResultOf(connector.connect("192.0.2.2", 22, None), StreamRefused)
        self.assertEqual(failure.value.reason, EndReason.EXITPOLICY)
        self.assertEqual(reactor.tcpClients, [])

    def test_nameResolvingToOwnAddress(self):
        class Upstream:
            pass

        resolver = ExitResolver(task.Clock(), Upstream(), self.policy)
        failure = self.failureResultOf(defer.maybeDeferred(resolver._filter, "me.example", ["192.0.2.2", "fd00::2"]),
                                       ResolveFailed)
        self.assertTrue(failure.value.refused)

    def test_packetsToOwnAddress(self):
        self.assertFalse(packetAllowed(self.policy, packet("192.0.2.2", 22)))
        self.assertFalse(packetAllowed(self.policy, packet("192.0.2.2", 53, PROTO_UDP)))
        self.assertTrue(packetAllowed(self.policy, packet("192.0.2.3", 22)))

    def test_summaryUnchanged(self):
        """Refusing a handful of own addresses changes no port a client would choose this exit for."""
        self.assertEqual(self.policy.summary(), defaultExitPolicy("").summary())

    def test_optOutForTestNetworks(self):
        policy = defaultExitPolicy("", rejectPrivate=False, localAddresses=self.local)
        self.assertTrue(policy.allows("192.0.2.2", 22))


class ExitRole(unittest.TestCase):
    def test_wildcardUdpStillRefusesEveryInterfaceAddress(self):
        """
        An exit started with the default C{--udp 0.0.0.0:PORT} refuses
        every address this machine has (the old exit's list of own
        addresses was empty then, and its policy let a client reach, e.g.,
        this machine's eth0 address on port 22).
        """
        from meshvpn.roles import relay

        options = relay.Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--udp", "0.0.0.0:0", "--listen", "tcp:0:interface=127.0.0.1",
                              "--exit-dns", "127.0.0.1:53", "--flags", "exit"])
        node = relay.makeService(options)
        policy = node.status.sources["exit"].policy
        mine = {str(ipaddress.ip_address(a.split("%")[0])) for a in interfaceAddresses()}
        self.assertTrue(mine)
        for address in mine:
            for port in (22, 443):
                self.assertFalse(policy.allows(address, port), f"the exit accepts its own {address}:{port}")

    def test_stunLearnedAddressIsRefused(self):
        """Behind a NAT the public address is on no interface: the STUN probe's answer is refused too."""
        from meshvpn.nat import stun
        from meshvpn.nat.publicaddr import PublicAddressProbe
        from meshvpn.nat.transaction import StunResult

        class Client:
            def request(self, message, addr):
                reply = stun.StunMessage(stun.BINDING, stun.SUCCESS, message.transactionId)
                reply.add(stun.XOR_MAPPED_ADDRESS, stun.encodeXorAddress(("198.51.100.20", 9000), message.transactionId))
                return defer.succeed(StunResult(reply, addr, 0.01, 1))

        local = LocalAddresses(task.Clock(), lambda: ["10.0.0.5"])
        policy = defaultExitPolicy("", localAddresses=local)
        probe = PublicAddressProbe(task.Clock(), Client(), [("198.18.0.1", 9000)], local.learn)
        self.assertEqual(self.successResultOf(probe.probe()), "198.51.100.20")
        self.assertFalse(policy.allows("198.51.100.20", 22))


# The client of the namespace test: links to the exit, builds a one-hop
# circuit and BEGINs to each target; prints {target: "connected" | END reason}.
CLIENT = r'''
import json, sys
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol
from meshvpn.errors import StreamRefused
from meshvpn.identity import NodeIdentity
from meshvpn.link.manager import LinkManager, LinkTarget
from meshvpn.link.protocol import LinkSettings
from meshvpn.onion.origin import HopSpec, OriginCircuit
from meshvpn.onion.switch import CircuitSwitch
from meshvpn.streams.edge import attachStreams

nodeId, onionKey, linkAddress, listen = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3], sys.argv[4]
targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sys.argv[5:]]

async def main(reactor):
    reactor.listenTCP(8080, Factory.forProtocol(Protocol), interface=listen)
    me = NodeIdentity.generate()
    links = LinkManager(reactor, me, LinkSettings(authenticate=False))
    switch = CircuitSwitch(reactor, me.nodeId)
    links.setCellHandler(switch)
    link = await links.getLink(LinkTarget(nodeId, (("tls", linkAddress),)))
    circuit = OriginCircuit(switch, link, [HopSpec(nodeId, onionKey)])
    await circuit.build()
    mux = attachStreams(circuit)
    out = {}
    for host, port in targets:
        try:
            stream = await mux.openStream(host, port).addTimeout(20, reactor)
            out[f"{host}:{port}"] = "connected"
            stream.close(None) if hasattr(stream, "close") else None
        except StreamRefused as e:
            out[f"{host}:{port}"] = e.reason.name
    print(json.dumps(out), flush=True)

task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
'''


class NamespaceExit(unittest.TestCase):
    timeout = 120

    def test_exitRefusesBeginToItsOwnVethAddress(self):
        """
        A real exit (twistd, default C{--udp 0.0.0.0:9000}, links on every
        interface) in its own namespace; a client in another namespace
        BEGINs to the exit's own veth address, where an SSH-like service
        listens: refused with EXITPOLICY, while a stream to the client's
        side of the veth connects.
        """
        from meshvpn.onion.keyring import OnionKeyRing
        from meshvpn.tools.netns import Netns, requireRoot
        from meshvpn.tools.processes import twistdPath

        requireRoot(self, tools=("ip",))
        net = Netns(self)
        ex, cl = net.add("ex"), net.add("cl")
        net.veth(ex, "198.18.61.2/24", cl, "198.18.61.1/24")
        dataDir = os.path.abspath(self.mktemp())
        os.makedirs(dataDir, mode=0o700)
        service = net.popen(ex, [sys.executable, "-c", "import socket, time\n"
                                 "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                                 "s.bind(('0.0.0.0', 22)); s.listen(); time.sleep(600)"])
        exitNode = net.popen(ex, [twistdPath(), "-n", "--pidfile=", "--logfile", os.path.join(dataDir, "twistd.log"),
                                  "meshvpn-relay", "--data-dir", dataDir, "--udp", "0.0.0.0:9000", "--listen", "tcp:9001",
                                  "--flags", "exit", "--exit-dns", "198.18.61.1:53"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(dataDir, "node.json")):
            self.assertIsNone(exitNode.poll(), "the exit died")
            self.assertLess(time.monotonic(), deadline, "the exit did not start")
            time.sleep(0.1)
        self.assertIsNone(service.poll())
        with open(os.path.join(dataDir, "node.json")) as f:
            nodeId = json.load(f)["node_id"]
        onionKey = OnionKeyRing.loadOrCreate(task.Clock(), os.path.join(dataDir, "onion-ring.key")).publicKeys()["current"]
        out = net.exec(cl, sys.executable, "-c", CLIENT, nodeId, onionKey.hex(), "198.18.61.2:9001", "198.18.61.1",
                       "198.18.61.2:22", "198.18.61.1:8080", timeout=60)
        result = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(result, {"198.18.61.2:22": "EXITPOLICY", "198.18.61.1:8080": "connected"})


class ProbeLifecycle(unittest.TestCase):
    def test_stopCancelsTheRequestInFlight(self):
        """A relay that stops while its STUN probe waits leaves no retransmission timer behind."""
        from meshvpn.nat.publicaddr import PublicAddressProbe

        asked = []

        class Client:
            def request(self, message, addr):
                d = defer.Deferred(lambda d: asked.append("cancelled"))
                asked.append(addr)
                return d

        learned = []
        probe = PublicAddressProbe(task.Clock(), Client(), [("198.18.0.1", 9000)], learned.append)
        probe.startService()
        self.assertEqual(asked, [("198.18.0.1", 9000)])
        probe.stopService()
        self.assertEqual(asked[-1], "cancelled")
        self.assertEqual(learned, [])
