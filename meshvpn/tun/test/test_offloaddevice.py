"""TUN offload with the kernel (root): TCP between two namespaces whose TUNs are joined through the offload
record stream of a circuit, with offload on, refused by the kernel, and cut in software."""

import sys

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from meshvpn.onion.cells import RELAY_DATA_LEN
from meshvpn.onion.packets import PacketReader, packetRecords
from meshvpn.tools.netns import Netns, requireRoot

SIZE = 16_000_000
# The receiver prints how many bytes came and their SHA-256; the sender sends a pattern both know.
SERVER = """
import hashlib, socket, sys, time
host = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
deadline = time.monotonic() + 30
while True:
    try:
        s.bind((host, 5001))
        break
    except OSError:  # an IPv6 address is usable once duplicate address detection is done
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
s.listen(1); s.settimeout(60)
c, _ = s.accept(); c.settimeout(60)
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b); n += len(b)
print(n, h.hexdigest())
"""
CLIENT = """
import hashlib, socket, sys, time
host, size = sys.argv[1], int(sys.argv[2])
block = hashlib.sha256(b"offload").digest() * 4096
deadline = time.monotonic() + 30
while True:
    try:
        c = socket.create_connection((host, 5001), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
h, left = hashlib.sha256(), size
while left:
    b = block[:left]
    c.sendall(b); h.update(b); left -= len(b)
c.close()
print(size, h.hexdigest())
"""


def bridge(src, dst):
    """Packets read from C{src} reach C{dst} as a FLOW_GSO circuit carries them: records cut into cell bodies."""
    reader = PacketReader(offload=True)

    def received(packets):
        stream = packetRecords(packets)
        out = []
        for i in range(0, len(stream), RELAY_DATA_LEN):
            out += reader.feed(stream[i:i + RELAY_DATA_LEN])
        dst.writePackets(out)

    src.setPacketReceiver(received)


class OffloadDeviceTests(unittest.TestCase):
    timeout = 240

    def _pair(self, family=4):
        requireRoot(self)
        from meshvpn.tools.netnsenter import netnsEntered
        from meshvpn.tun.device import TunDevice

        nets = Netns(self, "mvo")
        tuns = []
        a, b, bits = ("10.78.0.1", "10.78.0.2", 32) if family == 4 else ("fd78::1", "fd78::2", 128)
        for short, me, peer in (("a", a, b), ("b", b, a)):
            ns = nets.add(short)
            with netnsEntered(ns):
                tun = TunDevice(reactor, "mvo%d", mtu=1480, offload=True)
                self.addCleanup(tun.close)
                tun.configure(addresses=[f"{me}/{bits}"], routes=[f"{peer}/{bits}"])
            tuns.append((ns, tun))
        return tuns

    @defer.inlineCallbacks
    def _transfer(self, tuns, host="10.78.0.2"):
        (nsA, a), (nsB, b) = tuns
        bridge(a, b)
        bridge(b, a)
        server = utils.getProcessOutputAndValue("/usr/sbin/ip", ["netns", "exec", nsB, sys.executable, "-c", SERVER, host])
        client = utils.getProcessOutputAndValue("/usr/sbin/ip", ["netns", "exec", nsA, sys.executable, "-c", CLIENT,
                                                                 host, str(SIZE)])
        (sOut, sErr, sCode), (cOut, cErr, cCode) = yield defer.gatherResults([server, client])
        self.assertEqual((sCode, cCode), (0, 0), (sErr + cErr).decode())
        self.assertEqual(sOut.split(), cOut.split())
        self.assertEqual(int(sOut.split()[0]), SIZE)

    @defer.inlineCallbacks
    def test_offloadedBothWays(self):
        tuns = self._pair()
        (_, a), (_, b) = tuns
        self.assertTrue(a.readOffload and b.readOffload)
        yield self._transfer(tuns)
        # The sender's kernel gave us 64 KB segments; the receiver's took them whole.
        self.assertGreater(a.offloadRead, 0)
        self.assertGreater(b.offloadWritten, 0)
        self.assertLess(a.packetsRead, SIZE // 1440 // 4)
        self.assertEqual(a.offloadDrops + b.offloadDrops, 0)

    @defer.inlineCallbacks
    def test_offloadedIPv6(self):
        tuns = self._pair(family=6)
        (_, a), (_, b) = tuns
        yield self._transfer(tuns, host="fd78::2")
        self.assertGreater(a.offloadRead, 0)
        self.assertGreater(b.offloadWritten, 0)
        self.assertEqual(a.offloadDrops + b.offloadDrops, 0)

    @defer.inlineCallbacks
    def test_kernelRefusesReadOffload(self):
        """A kernel that refuses TUNSETOFFLOAD (here: asked for an offload bit it does not know) reads one packet each."""
        from meshvpn.tun import device

        self.patch(device, "OFFLOAD_FLAGS", device.OFFLOAD_FLAGS | 0x4000)
        tuns = self._pair()
        (_, a), (_, b) = tuns
        self.assertFalse(a.readOffload or b.readOffload)
        yield self._transfer(tuns)
        self.assertEqual(a.offloadRead + b.offloadRead, 0)
        self.assertGreater(a.packetsRead, SIZE // 1480)

    @defer.inlineCallbacks
    def test_writesCutInSoftware(self):
        """A device that may not take offloaded writes (the kernel refused one) gets them cut as GSO would."""
        tuns = self._pair()
        (_, a), (_, b) = tuns
        a.offloadWrites = b.offloadWrites = False
        yield self._transfer(tuns)
        self.assertGreater(a.offloadRead, 0)
        self.assertEqual(a.offloadWritten + b.offloadWritten, 0)
        self.assertGreater(b.packetsWritten, SIZE // 1480)
