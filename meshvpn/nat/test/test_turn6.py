"""TURN over IPv6 (RFC 8656 address families), client against our server in memory on task.Clock.

The in-memory network of L{meshvpn.nat.test.test_turn} (synchronous UDP
between multiplexers, the server's relayed sockets included) with IPv6
hosts: an IPv6 relayed address, an IPv4 and an IPv6 one at once, the 440 /
443 / 400 answers, the IPv6 peers a relayed address must never reach, and
the new attributes' parsers under hypothesis.
"""

from hypothesis import given, settings, strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from meshvpn.errors import RelayError
from meshvpn.nat import stun
from meshvpn.nat.test.test_turn import Collector, allocate, exchangeBothWays, setup
from meshvpn.nat.turn_attributes import (UnsupportedFamily, decodeAddressError, decodeFamily, encodeAddressError,
                                         encodeFamily)
from meshvpn.nat.turn_client import UDP_TRANSPORT

RELAY4, RELAY6 = "198.18.0.1", "2001:2::1"
S6, C6 = ("2001:2::1", 3478), ("2001:2:5::2", 5000)
PEER4, PEER6 = ("198.18.9.9", 7000), ("2001:2:9::9", 7000)


def world6(case, **kw):
    """A dual-stack TURN server reached over IPv6 by an IPv6-only client."""
    kw.setdefault("relayHost6", RELAY6)
    return setup(case, server=S6, client=C6, relayHost=RELAY4, **kw)


def request(net, alloc, method, attrs):
    """One authenticated request with exactly C{attrs} (after the credential dance)."""
    d = defer.Deferred.fromCoroutine(alloc._request(method, attrs))
    net.pump()
    return d


class IPv6AllocationTests(unittest.TestCase):
    def test_ipv6RelayedAddressCarriesBothWays(self):
        clock, net, server, cep, cmux, S = world6(self)
        d, alloc = allocate(self, clock, net, cep, cmux, S, family=6)
        self.successResultOf(d)
        self.assertEqual(alloc.relayedAddress, (RELAY6, 50000))
        self.assertEqual(alloc.relayedAddresses, {6: (RELAY6, 50000)})
        self.assertEqual(alloc.mappedAddress, C6)
        peer = Collector()
        net.attach(PEER6, peer)
        got = []
        alloc.setReceiver(lambda data, addr: got.append((data, addr)))
        d = alloc.createPermission(PEER6)
        net.pump()
        self.successResultOf(d)
        exchangeBothWays(self, net, alloc, peer, got, PEER6, b"6")
        d = alloc.release()
        net.pump()
        self.successResultOf(d)
        self.assertEqual(server.allocations, {})
        self.assertNotIn((RELAY6, 50000), net.hosts)  # its relayed socket closed

    def test_ipv4PeerOfAnIPv6AllocationIs443(self):
        clock, net, server, cep, cmux, S = world6(self)
        d, alloc = allocate(self, clock, net, cep, cmux, S, family=6)
        self.successResultOf(d)
        for attempt in (alloc.createPermission(PEER4), alloc.channelBind(PEER4)):
            net.pump()
            self.assertIn("443", str(self.failureResultOf(attempt, RelayError).value))
        self.assertEqual(server.counters["family_mismatch"], 2)
        # and data to it goes nowhere
        peer = Collector()
        net.attach(PEER4, peer)
        alloc.send(PEER4, b"x")
        net.pump()
        self.assertEqual(peer.got, [])

    def test_bothFamiliesAtOnce(self):
        """ADDITIONAL-ADDRESS-FAMILY: one relayed address per family; each peer is reached from its own family's."""
        clock, net, server, cep, cmux, S = setup(self, relayHost6=RELAY6)
        d, alloc = allocate(self, clock, net, cep, cmux, S, additionalFamily=True)
        self.successResultOf(d)
        self.assertEqual(alloc.relayedAddresses, {4: (RELAY4, 50000), 6: (RELAY6, 50001)})
        self.assertEqual(alloc.relayedAddress, (RELAY4, 50000))
        self.assertIsNone(alloc.addressError)
        peers = {PEER4: Collector(), PEER6: Collector()}
        got = []
        alloc.setReceiver(lambda data, addr: got.append((data, addr)))
        for address, peer in peers.items():
            net.attach(address, peer)
            alloc.createPermission(address)
            net.pump()
            alloc.send(address, b"to " + address[0].encode())
        net.pump()
        self.assertEqual(peers[PEER4].got, [(b"to 198.18.9.9", (RELAY4, 50000))])
        self.assertEqual(peers[PEER6].got, [(b"to 2001:2:9::9", (RELAY6, 50001))])
        net.queue.append((PEER6, (RELAY6, 50001), b"six"))
        net.pump()
        self.assertEqual(got, [(b"six", PEER6)])
        # an expiry closes both relayed sockets
        alloc._stopTimers()
        clock.advance(700)
        self.assertEqual(server.allocations, {})
        self.assertFalse({(RELAY4, 50000), (RELAY6, 50001)} & set(net.hosts))

    def test_additionalFamilyNotRelayedHereSaysWhy(self):
        clock, net, server, cep, cmux, S = setup(self)  # IPv4 relay host only
        d, alloc = allocate(self, clock, net, cep, cmux, S, additionalFamily=True)
        self.successResultOf(d)
        self.assertEqual(alloc.relayedAddresses, {4: (RELAY4, 50000)})
        self.assertEqual(alloc.addressError, (6, 440, "Address Family not Supported"))

    def test_ipv6NotRelayedHereIs440(self):
        clock, net, server, cep, cmux, S = setup(self)
        d, alloc = allocate(self, clock, net, cep, cmux, S, family=6)
        self.assertIn("440", str(self.failureResultOf(d, RelayError).value))
        self.assertEqual(server.allocations, {})

    def test_ipv6OnlyServerRefusesTheIPv4Default(self):
        clock, net, server, cep, cmux, S = setup(self, server=S6, client=C6, relayHost=RELAY6)
        d, alloc = allocate(self, clock, net, cep, cmux, S)
        self.assertIn("440", str(self.failureResultOf(d, RelayError).value))
        d, alloc = allocate(self, clock, net, cep, cmux, S, family=6)
        self.successResultOf(d)
        self.assertEqual(alloc.relayedAddress, (RELAY6, 50000))

    def test_malformedFamilyRequests(self):
        clock, net, server, cep, cmux, S = world6(self)
        d, alloc = allocate(self, clock, net, cep, cmux, S, family=6)
        self.successResultOf(d)
        self.successResultOf(request(net, alloc, stun.REFRESH, [(stun.LIFETIME, stun.encodeUint32(0))]))
        base = [(stun.REQUESTED_TRANSPORT, UDP_TRANSPORT)]
        cases = [
            ([(stun.REQUESTED_ADDRESS_FAMILY, b"\x02\x00\x00")], "400"),  # 3 bytes
            ([(stun.REQUESTED_ADDRESS_FAMILY, b"\x03\x00\x00\x00")], "440"),  # no such family
            ([(stun.ADDITIONAL_ADDRESS_FAMILY, encodeFamily(4))], "400"),  # only IPv6 may be additional
            ([(stun.REQUESTED_ADDRESS_FAMILY, encodeFamily(4)), (stun.ADDITIONAL_ADDRESS_FAMILY, encodeFamily(6))],
             "400"),  # never both
        ]
        for attrs, code in cases:
            d = request(net, alloc, stun.ALLOCATE, base + attrs)
            self.assertIn(code, str(self.failureResultOf(d, RelayError).value), attrs)
        self.assertEqual(server.allocations, {})

    def test_refreshOfAFamilyItLacksIs443(self):
        clock, net, server, cep, cmux, S = world6(self)
        d, alloc = allocate(self, clock, net, cep, cmux, S, family=6)
        self.successResultOf(d)
        d = request(net, alloc, stun.REFRESH, [(stun.REQUESTED_ADDRESS_FAMILY, encodeFamily(4)),
                                                (stun.LIFETIME, stun.encodeUint32(300))])
        self.assertIn("443", str(self.failureResultOf(d, RelayError).value))
        d = request(net, alloc, stun.REFRESH, [(stun.REQUESTED_ADDRESS_FAMILY, encodeFamily(6)),
                                                (stun.LIFETIME, stun.encodeUint32(300))])
        self.successResultOf(d)

    def test_ipv6PeersThatLeadInsideAreForbidden(self):
        """The attack: reach the relay's own or private networks through IPv6 spellings of them."""
        clock, net, server, cep, cmux, S = world6(self)
        d, alloc = allocate(self, clock, net, cep, cmux, S, family=6)
        self.successResultOf(d)
        for host in ("::1", "::", "fe80::1", "fd00::1", "ff02::1", "::ffff:10.0.0.1", "64:ff9b::a00:1",
                     "64:ff9b:1::1", "2002:a00:1::1", "2001:0:4136:e378::1", "2001:db8::1", "fec0::1", RELAY6):
            d = alloc.createPermission((host, 7000))
            net.pump()
            self.assertIn("403", str(self.failureResultOf(d, RelayError).value), host)
        d = alloc.createPermission(PEER6)  # RFC 5180 benchmarking space: the test internet, allowed
        net.pump()
        self.successResultOf(d)


class AttributeParsingTests(unittest.TestCase):
    @given(st.binary(max_size=12))
    @settings(max_examples=300, deadline=None)
    def test_familyTakesAnyBytes(self, raw):
        try:
            family = decodeFamily(raw)
        except UnsupportedFamily:
            self.assertEqual(len(raw), 4)
            self.assertNotIn(raw[0], (1, 2))
        except stun.StunParseError:
            self.assertNotEqual(len(raw), 4)
        else:
            self.assertEqual(encodeFamily(family)[0], raw[0])

    @given(st.binary(max_size=40))
    @settings(max_examples=300, deadline=None)
    def test_addressErrorTakesAnyBytes(self, raw):
        try:
            family, code, reason = decodeAddressError(raw)
        except stun.StunParseError:
            return
        self.assertIn(family, (4, 6))
        self.assertTrue(300 <= code <= 699)
        self.assertIsInstance(reason, str)

    @given(st.sampled_from((4, 6)), st.integers(300, 699), st.text(max_size=40))
    @settings(max_examples=100, deadline=None)
    def test_addressErrorRoundTrip(self, family, code, reason):
        self.assertEqual(decodeAddressError(encodeAddressError(family, code, reason)), (family, code, reason))

    @given(st.lists(st.tuples(st.sampled_from((stun.REQUESTED_ADDRESS_FAMILY, stun.ADDITIONAL_ADDRESS_FAMILY)),
                              st.binary(max_size=8)), max_size=3))
    @settings(max_examples=60, deadline=None)
    def test_serverAnswersAnyFamilyAttributes(self, attrs):
        """Whatever family attributes an authenticated ALLOCATE carries: a grant or a 400/440, never a crash."""
        clock, net, server, cep, cmux, S = world6(self)
        d, alloc = allocate(self, clock, net, cep, cmux, S, family=6)
        self.successResultOf(d)
        self.successResultOf(request(net, alloc, stun.REFRESH, [(stun.LIFETIME, stun.encodeUint32(0))]))
        d = request(net, alloc, stun.ALLOCATE, [(stun.REQUESTED_TRANSPORT, UDP_TRANSPORT), *attrs])
        result = []
        d.addBoth(result.append)
        self.assertEqual(len(result), 1)
        if isinstance(result[0], Exception) or hasattr(result[0], "value"):
            message = str(getattr(result[0], "value", result[0]))
            self.assertTrue(any(code in message for code in ("400", "440")), message)
        else:
            self.assertLessEqual(len(server.allocations), 1)


class CoturnIPv6Tests(unittest.TestCase):
    timeout = 120

    def test_ipv6AllocationOnCoturn(self):
        """
        Our client asks Debian's coturn for an IPv6 relayed address
        (REQUESTED-ADDRESS-FAMILY) over IPv6, and runs every operation
        through it to an IPv6 echo peer (root, namespaces; runs in CI).
        """
        import json
        import os
        import subprocess
        import sys
        import tempfile
        import time

        from meshvpn.tools.netns import Netns, requireRoot

        requireRoot(self, tools=("ip", "turnserver"))
        work = tempfile.mkdtemp(prefix="mvturn6-")
        self.addCleanup(__import__("shutil").rmtree, work, True)
        n = Netns(self, "mvt6")
        srv, cl = n.add("srv"), n.add("cl")
        a, b = n.veth(srv, None, cl, None)
        server, client, peer = "2001:2::3", "2001:2::5", "2001:2::9"
        for address in (server, peer):  # the peer beside coturn, on an address of its own
            n.exec(srv, "ip", "-6", "addr", "add", f"{address}/64", "dev", a, "nodad")
        n.exec(cl, "ip", "-6", "addr", "add", f"{client}/64", "dev", b, "nodad")
        log = os.path.join(work, "coturn.log")
        coturn = n.popen(srv, ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "--simple-log", "--log-file", log,
                               "--pidfile", os.path.join(work, "coturn.pid"), "--listening-ip", server,
                               "--relay-ip", server, "--listening-port", "3478", "--lt-cred-mech",
                               "--user", "alice:secret", "--realm", "meshvpn.test", "--fingerprint", "--no-tcp-relay"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while f"[{server}]:3478" not in n.exec(srv, "ss", "-Hlun", check=False):
            self.assertIsNone(coturn.poll(), "coturn exited")
            self.assertLess(time.monotonic(), deadline, "coturn not listening after 30 s")
            time.sleep(0.2)
        echo = n.popen(srv, [sys.executable, "-m", "meshvpn.tools.turncheck", "--echo", "6000", "--family", "6",
                            "--echo-host", peer],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.assertIn(b"ready", echo.stdout.readline())
        out = n.exec(cl, sys.executable, "-m", "meshvpn.tools.turncheck", "--server", f"[{server}]:3478",
                     "--user", "alice", "--password", "secret", "--peer", f"[{peer}]:6000", "--family", "6",
                     timeout=60)
        result = json.loads(out)
        with open(log, errors="replace") as f:
            why = f"{result}\n{f.read()[-3000:]}"
        self.assertEqual(result["relayed"][0], server)
        self.assertEqual(result["mapped"][0], client)
        self.assertTrue(result["echo_via_indication"], why)
        self.assertEqual(result["channel"], 0x4000)
        self.assertTrue(result["echo_via_channel"], result)
        self.assertTrue(result["released"])
