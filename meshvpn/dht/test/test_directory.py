"""The relay directory: announcements filed under their host, region samples, cross-checks."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.dht.descriptor import encodeDescriptor, makeDescriptor, parseDescriptor
from meshvpn.dht import wire
from meshvpn.dht.directory import (
    DESCRIPTOR_SALT,
    DirectoryPolicy,
    RelayDirectory,
    hostKey,
    parseAddress,
    roleClass,
    roleSalt,
)
from meshvpn.dht.records import OWNED, SHARED, makeRecord, sampleClass
from meshvpn.identity import NodeIdentity
from meshvpn.dht.test.test_attacks import publishRelay
from meshvpn.dht.test.test_rpc import T0, Net, newIdentity


def roleRecord(ident, udp, role="guard", host=None, kind=SHARED, flags=None):
    d = makeDescriptor(ident, {"udp": udp}, flags or {role}, published=T0)
    host = host or hostKey(parseAddress(udp))
    return makeRecord(ident, roleSalt(role, host), encodeDescriptor(d), 1, T0 + 3600, kind=kind)


class PolicyTests(unittest.TestCase):
    def setUp(self):
        self.policy = DirectoryPolicy()
        self.ident = NodeIdentity.generate()

    def test_roleAnnouncementOnlyFromItsHost(self):
        r = roleRecord(self.ident, "198.18.5.5:4000")
        self.assertTrue(self.policy(r, ("198.18.5.5", 4000)))
        self.assertTrue(self.policy(r, ("198.18.5.5", 9999)))  # the host, whatever port NAT gave it
        self.assertTrue(self.policy(r, None))  # our own, stored locally
        self.assertFalse(self.policy(r, ("198.18.5.6", 4000)))  # anyone else: refused

    def test_descriptorMustMatchTheSalt(self):
        other = NodeIdentity.generate()
        cases = [
            roleRecord(self.ident, "198.18.5.5:4000", host="198.18.9.9"),  # filed under another host
            roleRecord(self.ident, "198.18.5.5:4000", flags={"middle"}),  # role not in the descriptor
            roleRecord(self.ident, "198.18.5.5:4000", kind=OWNED),  # role records are shared
            makeRecord(self.ident, roleClass("wizard") + b"@198.18.5.5", b"x", 1, T0 + 60, kind=SHARED),
            makeRecord(self.ident, roleClass("guard") + b"-no-host", b"x", 1, T0 + 60, kind=SHARED),
            makeRecord(self.ident, DESCRIPTOR_SALT, b"x", 1, T0 + 60, kind=SHARED),  # descriptors are owned
        ]
        # someone else's descriptor inside our record
        d = makeDescriptor(other, {"udp": "198.18.5.5:4000"}, {"guard"}, published=T0)
        cases.append(makeRecord(self.ident, roleSalt("guard", "198.18.5.5"), encodeDescriptor(d), 1, T0 + 60,
                                kind=SHARED))
        for r in cases:
            self.assertFalse(self.policy(r, ("198.18.5.5", 4000)), r.salt)
        self.assertTrue(self.policy(makeRecord(self.ident, b"anything else", b"x", 1, T0 + 60), ("1.2.3.4", 5)))
        self.assertFalse(DirectoryPolicy.replicable(roleRecord(self.ident, "198.18.5.5:4000")))

    def test_loopbackTestnetCountsPorts(self):
        self.assertEqual(hostKey(("127.0.0.1", 9)), "127.0.0.1")
        self.assertEqual(hostKey(("127.0.0.1", 9), exemptLoopback=True), "127.0.0.1:9")
        self.assertEqual(hostKey(("198.18.0.1", 9), exemptLoopback=True), "198.18.0.1")
        policy = DirectoryPolicy(exemptLoopback=True)
        r = roleRecord(self.ident, "127.0.0.1:4000", host="127.0.0.1:4000")
        self.assertTrue(policy(r, ("127.0.0.1", 4000)))
        self.assertFalse(policy(r, ("127.0.0.1", 4001)))
        self.assertEqual(parseAddress("[::1]:5"), ("::1", 5))
        self.assertIsNone(parseAddress("example.com:5"))
        self.assertEqual(sampleClass(roleSalt("guard", "::1")), roleClass("guard"))

    @settings(max_examples=300)
    @given(st.binary(max_size=64), st.binary(max_size=600), st.sampled_from([OWNED, SHARED]),
           st.one_of(st.none(), st.tuples(st.sampled_from(["198.18.1.1", "::1", "127.0.0.1"]), st.integers(1, 9))))
    def test_anyRecordNeverRaises(self, salt, value, kind, origin):
        r = makeRecord(self.ident, salt, value, 1, T0 + 60, kind=kind)
        self.assertIn(self.policy(r, origin), (True, False))
        self.assertIn(DirectoryPolicy(True)(r, origin), (True, False))


class DescriptorPeekTests(unittest.TestCase):
    def test_parseWithoutVerifying(self):
        ident = NodeIdentity.generate()
        raw = encodeDescriptor(makeDescriptor(ident, {"udp": "198.18.0.1:1"}, {"guard"}, published=T0))
        forged = raw[:-1] + bytes([raw[-1] ^ 1])
        self.assertEqual(parseDescriptor(forged, verify=False).nodeId, ident.nodeId)
        self.assertRaises(ValueError, parseDescriptor, forged)


class SampleTests(unittest.TestCase):
    def test_oneRelayPerHostAndAllHostsFound(self):
        net = Net(self, 25)
        honest = net.nodes[1:6]
        for n in honest:
            publishRelay(net, n, {"middle"})
        # one host, five identities (real nodes on five ports), each announcing itself
        from meshvpn.tools.dhtsim import makeSimNode

        host = net.nodes[8]
        for i in range(5):
            sybil = makeSimNode(net.net, net.clock, (host.address[0], 5000 + i), net.config, rng=net.rng)
            self.addCleanup(sybil.stop)
            net.run(sybil.bootstrap([net.nodes[0].address]), 20)
            publishRelay(net, sybil, {"middle"})
        publishRelay(net, host, {"middle"})
        reader = RelayDirectory(net.nodes[20], newIdentity(), rng=__import__("random").Random(4), maxRounds=40,
                                patience=40)
        found = net.run(reader.sample("middle", 20), 60)
        udp = [d.address("udp").rpartition(":")[0] for d in found]
        self.assertEqual(len(udp), len(set(udp)))  # one per host
        self.assertEqual({n.address[0] for n in honest} | {host.address[0]}, set(udp))
        self.assertEqual(reader.lastSample["hosts"], 6)

    def test_deadRelaysAreNotListed(self):
        net = Net(self, 20)
        for n in net.nodes[1:4]:
            publishRelay(net, n, {"exit"})
        dead = net.nodes[2]
        net.net.unbind(dead.address)
        reader = RelayDirectory(net.nodes[10], newIdentity(), rng=__import__("random").Random(5))
        found = net.run(reader.sample("exit", 5), 60)
        self.assertEqual({d.nodeId for d in found}, {net.nodes[1].nodeId, net.nodes[3].nodeId})
        self.assertGreater(reader.rejected, 0)

    def test_withholdingStorersDoNotHideTheNearest(self):
        net = Net(self, 30)
        for n in net.nodes[1:11]:
            publishRelay(net, n, {"middle"})
        # half the nodes answer every SAMPLE with nothing
        for n in net.nodes[15:30:2]:
            n.answerSample = lambda target, cls: ([], [])
        reader = net.nodes[16]
        target = b"\x42" * 32
        result = net.run(reader.sampleRegion(roleClass("middle"), target), 30)
        t = int.from_bytes(target, "big")
        everyone = sorted({r.key for n in net.nodes for r, _ in n.store.items() if r.salt.startswith(roleClass("middle"))},
                          key=lambda k: int.from_bytes(k, "big") ^ t)
        self.assertEqual(sorted({r.key for r in result.records}), sorted(everyone[:3]))
        self.assertEqual(wire.SAMPLE, 8)


class _RoleRefusingDHT:
    """Stores a relay's own descriptor record, but none of its role records."""

    class config:
        exemptLoopback = False

    def __init__(self):
        from twisted.internet import task

        self.clock = task.Clock()
        self.clock.advance(T0)

    def put(self, record, republish=False):
        from twisted.internet import defer

        from meshvpn.errors import DHTError

        if record.kind == SHARED:
            return defer.fail(DHTError("no node stored the record"))
        return defer.succeed(1)


class PublishTests(unittest.TestCase):
    def test_roleRecordsStoredNowhereIsAFailure(self):
        """
        Old code: only the descriptor record had to be stored; a relay whose
        role records went nowhere counted as published, yet no region sample
        could find it, and it was not tried again for an interval.
        """
        ident = newIdentity()
        directory = RelayDirectory(_RoleRefusingDHT(), ident)
        d = makeDescriptor(ident, {"udp": "198.18.5.5:4000"}, {"guard", "middle"}, published=T0)
        failure = self.failureResultOf(directory.publish(d))
        self.assertIn("role records", failure.getErrorMessage())
