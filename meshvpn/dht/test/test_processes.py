"""Real processes on loopback: 20 `twistd meshvpn-relay` nodes and one client.

The client must find all 20 relay descriptors through the DHT alone and every
signature must verify; forged and replayed descriptors injected by the test
(a hostile peer speaking the wire protocol) must be rejected.  Each relay has
its own loopback address (127.0.N.1), standing for a host of its own: the DHT's
per-subnet and per-host limits apply to loopback like to any network.
"""

import base64
import json
import os
import shutil
import socket
import tempfile
import time

from twisted.trial import unittest

from meshvpn.dht.descriptor import _encodeBody, encodeDescriptor, makeDescriptor, parseDescriptor
from meshvpn.dht import wire
from meshvpn.dht.directory import descriptorKey, roleSalt
from meshvpn.dht.records import SHARED, makeRecord, parseRecord, verifyRecord
from meshvpn.dht.service import RELAYS_FILE
from meshvpn.identity import NodeIdentity
from meshvpn.tools.processes import NodeProcess

RELAYS = 20


def hostPort(text):
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port))


class Peer:
    """A hostile peer: a plain UDP socket speaking the DHT wire format (client mode)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3.0)
        self.key = NodeIdentity.generate().identityPublicKey
        self.n = 0
        self.tokens = {}

    def ask(self, addr, kind, payload=None):
        if addr not in self.tokens and kind != wire.PING:
            self.ask(addr, wire.PING)  # an address token first, as every DHT node does
        self.n += 1
        txid = self.n.to_bytes(8, "big")
        token = self.tokens.get(addr, b"\x00" * 8)
        self.sock.sendto(wire.encode(kind, txid, self.key, payload, wire.FLAG_CLIENT, token=token), addr)
        while True:
            data, src = self.sock.recvfrom(2048)
            msg = wire.decode(data)
            if msg.txid == txid and src == addr:
                self.tokens[addr] = msg.token
                return msg

    def close(self):
        self.sock.close()


class RelayNetworkTests(unittest.TestCase):
    timeout = 240

    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="meshvpn-dht-test-")
        self.nodes = []
        self.addCleanup(shutil.rmtree, self.base, True)
        self.addCleanup(self.stopAll)

    def stopAll(self):
        for n in self.nodes:
            n.stop()

    def start(self, role, name, args, host="127.0.0.1"):
        node = NodeProcess(role, os.path.join(self.base, name), args, name=name, host=host)
        self.nodes.append(node)
        return node.start()

    def test_clientFindsAllRelaysRejectsForgedAndReplayed(self):
        started = time.monotonic()
        # relay0 republishes every 2 s, so the test can replay an older record of it
        first = self.start("relay", "relay0", ["--flags", "guard,middle,bootstrap", "--dht-republish", "2"],
                           host="127.0.1.1")
        boot = first.waitReady()["udp"]
        others = [self.start("relay", f"relay{i}", ["--bootstrap", boot], host=f"127.0.{i + 1}.1")
                  for i in range(1, RELAYS)]
        infos = [first.info] + [n.waitReady(60) for n in others]
        client = self.start("client", "client", ["--bootstrap", boot, "--dht-sample-interval", "2"])
        client.waitReady()

        relaysFile = os.path.join(client.dataDir, RELAYS_FILE)
        wanted = {i["node_id"] for i in infos}
        listed = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with open(relaysFile) as f:
                    written = json.load(f)
                listed = {e["node_id"]: e for e in written["relays"]}
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            if wanted <= set(listed):
                break
            time.sleep(0.2)
        if set(listed) != wanted:
            missing = [n for n, i in zip(self.nodes, infos) if i["node_id"] not in listed]
            self.fail(f"not found: {sorted(wanted - set(listed))}; unexpected: {sorted(set(listed) - wanted)}\n"
                      + "".join(f"--- {n.name}\n{n.logTail()}\n" for n in missing) + f"--- client\n{client.logTail()}")
        # Checked as of when the client wrote them (a loaded machine can be slow).
        now = written["updated"]
        for info in infos:
            d = parseDescriptor(base64.b64decode(listed[info["node_id"]]["descriptor"]), now=now)
            self.assertEqual(d.nodeId.hex(), info["node_id"])
            self.assertEqual(d.address("udp"), info["udp"])
            self.assertEqual(d.address("tls"), info["stream"])
        foundAt = time.monotonic() - started

        peer = Peer()
        self.addCleanup(peer.close)
        victim = infos[0]
        victimId = bytes.fromhex(victim["node_id"])
        target = hostPort(infos[5]["udp"])

        # the victim's current descriptor record, as any node can fetch it
        key = descriptorKey(victimId)
        old = max((parseRecord(r) for r in peer.ask(target, wire.FIND_VALUE, key).payload[0]), key=lambda r: r.seq)
        verifyRecord(old, time.time(), key)

        # forged: the victim's record with another address, signature unchanged
        raw = bytearray(old.raw)
        at = raw.find(victim["udp"].encode())
        self.assertGreater(at, 0)
        raw[at : at + 9] = b"198.18.66"  # same length, different address
        self.assertEqual(peer.ask(target, wire.STORE, bytes(raw)).payload, wire.STALE)  # same seq
        seqAt = 34 + len(old.salt)
        raw[seqAt : seqAt + 8] = (old.seq + 10**9).to_bytes(8, "big")  # and a higher one
        for info in infos:
            self.assertEqual(peer.ask(hostPort(info["udp"]), wire.STORE, bytes(raw)).payload, wire.BAD_RECORD)

        # forged: an attacker signs a descriptor claiming the victim's id and
        # announces it at its own host (the record itself is validly signed):
        # every relay refuses to file it
        attacker = NodeIdentity.generate()
        peerAddr = "%s:%d" % peer.sock.getsockname()
        fake = makeDescriptor(attacker, {"udp": peerAddr}, {"guard"}, published=time.time())
        fake = fake.__class__(
            victimId, fake.identityKey, fake.onionKeys, fake.addresses, fake.flags, fake.exitPolicy,
            fake.bandwidth, fake.family, fake.published, fake.expires,
            attacker.sign(b"meshvpn-descriptor-v1\x00" + _encodeBody(fake)),
        )
        forged = makeRecord(attacker, roleSalt("guard", "127.0.0.1"), encodeDescriptor(fake), 1, time.time() + 600,
                            kind=SHARED)
        for info in infos:
            self.assertEqual(peer.ask(hostPort(info["udp"]), wire.STORE, forged.raw).payload, wire.BAD_RECORD)
        # a relay that announces itself properly but is not there: filed, and the client drops it
        ghost = makeDescriptor(attacker, {"udp": peerAddr}, {"guard"}, published=time.time())
        announce = makeRecord(attacker, roleSalt("guard", "127.0.0.1"), encodeDescriptor(ghost), 1,
                              time.time() + 600, kind=SHARED)
        for info in infos:
            self.assertEqual(peer.ask(hostPort(info["udp"]), wire.STORE, announce.raw).payload, wire.STORED)

        # replayed: once relay0 has republished (seq grew), its old record is refused
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            records = peer.ask(target, wire.FIND_VALUE, key).payload[0]
            if max(parseRecord(r).seq for r in records) > old.seq:
                break
            time.sleep(0.5)
        self.assertEqual(peer.ask(target, wire.STORE, old.raw).payload, wire.STALE)
        current = [parseRecord(r) for r in peer.ask(target, wire.FIND_VALUE, key).payload[0]]
        self.assertGreater(min(r.seq for r in current), old.seq)

        # ...but the client cross-checks every relay before it lists it.  The
        # ghost is one of 21 guard records and each round of a sample keeps
        # the 3 nearest a random point: a slow client may take several
        # samplings to draw it.
        body = {"relays": []}
        deadline = time.monotonic() + 60
        rejected = 0
        while time.monotonic() < deadline and not (rejected and len(body["relays"]) == RELAYS):
            time.sleep(0.5)
            with open(relaysFile) as f:
                body = json.load(f)
            rejected = body["rejected"]
        self.assertGreater(rejected, 0, client.logTail(3000))
        addresses = {e["addresses"]["udp"] for e in body["relays"]}
        self.assertNotIn(peerAddr, addresses)
        self.assertEqual({e["node_id"] for e in body["relays"]}, wanted, "relays missing from the client's list")
        print(f"\n  20 relays + client: all descriptors found after {foundAt:.1f}s; total {time.monotonic() - started:.1f}s")
