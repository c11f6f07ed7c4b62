"""Relay crypto layers, flow windows and the onion key ring, in isolation."""

import os

from twisted.internet import task
from twisted.trial import unittest

from meshvpn.onion.cells import RelayCommand, packRelay, unpackRelay
from meshvpn.onion.flow import FlowError, ReceiveWindow, SendWindow
from meshvpn.onion.keyring import OnionKeyRing
from meshvpn.onion.relaycrypto import OriginCrypto, RelayLayer


def _circuit(hops=3):
    seeds = [os.urandom(32) for _ in range(hops)]
    origin = OriginCrypto()
    for s in seeds:
        origin.addHop(s)
    return origin, [RelayLayer(s) for s in seeds]


class Layers(unittest.TestCase):
    def test_onlyTheTargetHopRecognizes(self):
        for target in range(3):
            origin, relays = _circuit()
            payload, tag = origin.encrypt(packRelay(RelayCommand.DATA, 1, b"hello"), target)
            for i, layer in enumerate(relays):
                payload = layer.decryptForward(payload)
                got = layer.recognizeForward(payload)
                if i == target:
                    self.assertEqual(got, tag)
                    self.assertEqual(unpackRelay(payload).data, b"hello")
                    break
                self.assertIsNone(got)

    def test_eachHopRemovesExactlyOneLayer(self):
        origin, relays = _circuit()
        plain = packRelay(RelayCommand.DATA, 1, b"x" * 100)
        payload, tag = origin.encrypt(plain, 2)
        views = []
        for layer in relays:
            payload = layer.decryptForward(payload)
            views.append(payload)
        self.assertEqual(views[2][8:], plain[8:])
        self.assertNotIn(b"x" * 16, views[0])
        self.assertNotIn(b"x" * 16, views[1])

    def test_backward(self):
        origin, relays = _circuit()
        ct, tag = relays[2].originateBackward(packRelay(RelayCommand.DATA, 1, b"back"))
        ct = relays[1].encryptBackward(ct)
        ct = relays[0].encryptBackward(ct)
        hop, plain, got = origin.decrypt(ct)
        self.assertEqual((hop, unpackRelay(plain).data, got), (2, b"back", tag))

    def test_tagBindsPosition(self):
        """The same bytes at another position fail (replay), a flipped bit fails (forgery)."""
        origin, relays = _circuit(1)
        ct, _ = origin.encrypt(packRelay(RelayCommand.DATA, 1, b"a"), 0)
        layer = relays[0]
        self.assertIsNotNone(layer.recognizeForward(layer.decryptForward(ct)))
        self.assertIsNone(layer.recognizeForward(layer.decryptForward(ct)))
        origin, relays = _circuit(1)
        ct, _ = origin.encrypt(packRelay(RelayCommand.DATA, 1, b"a"), 0)
        bad = bytearray(ct)
        bad[200] ^= 0x80
        self.assertIsNone(relays[0].recognizeForward(relays[0].decryptForward(bytes(bad))))


class Windows(unittest.TestCase):
    def test_authenticatedSendme(self):
        send, recv = SendWindow(10, 5), ReceiveWindow(10, 5)
        acks = []
        for i in range(10):
            tag = i.to_bytes(8, "big")
            send.onSent(tag)
            ack = recv.onReceived(tag)
            if ack:
                acks.append(ack)
        self.assertEqual(send.window, 0)
        self.assertEqual(acks, [(4).to_bytes(8, "big"), (9).to_bytes(8, "big")])
        self.assertRaises(FlowError, send.onSendme, b"\x00" * 8)   # forged
        send2 = SendWindow(10, 5)
        for i in range(5):
            send2.onSent(i.to_bytes(8, "big"))
        send2.onSendme((4).to_bytes(8, "big"))
        self.assertEqual(send2.window, 10)
        self.assertRaises(FlowError, send2.onSendme, (4).to_bytes(8, "big"))  # replayed / unexpected

    def test_overrun(self):
        recv = ReceiveWindow(3, 100)
        for i in range(3):
            recv.onReceived(b"t" * 8)
        self.assertRaises(FlowError, recv.onReceived, b"t" * 8)


class KeyRing(unittest.TestCase):
    def test_rotation(self):
        clock = task.Clock()
        ring = OnionKeyRing(clock, overlap=100)
        first = ring.publicKeys()
        self.assertIsNotNone(ring.findKey(first["current"]))
        self.assertIsNotNone(ring.findKey(first["next"]))
        ring.rotate()
        self.assertEqual(ring.publicKeys()["current"], first["next"])
        self.assertIsNotNone(ring.findKey(first["current"]))
        clock.advance(100)
        self.assertIsNone(ring.findKey(first["current"]))
        self.assertIsNone(ring.findKey(b"\x01" * 32))


class RingOnDiskAndService(unittest.TestCase):
    def test_persistedRotation(self):
        import stat

        from meshvpn.errors import KeyFileError
        from meshvpn.identity import NodeIdentity
        from meshvpn.onion.keyring import RING_FILE
        from meshvpn.onion.service import OnionService

        clock = task.Clock()
        clock.advance(1000)
        ident = NodeIdentity.generate()
        data = self.mktemp()
        os.makedirs(data, mode=0o700)
        svc = OnionService(clock, ident, data, lifetime=100, overlap=50)
        path = os.path.join(data, RING_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        first = svc.keyRing.publicKeys()
        self.assertEqual(first["current"], ident.onionPublicKey)  # the node's onion key starts as current
        seen = []
        svc.onRotate.append(seen.append)
        svc.startService()
        clock.advance(100)
        self.assertEqual(seen, [svc.keyRing.publicKeys()])
        self.assertEqual(svc.keyRing.publicKeys()["current"], first["next"])
        svc.stopService()
        # a restart keeps the ring, including the previous key and its expiry
        again = OnionService(clock, ident, data, lifetime=100, overlap=50)
        self.assertEqual(again.keyRing.publicKeys(), svc.keyRing.publicKeys())
        self.assertIsNotNone(again.keyRing.findKey(first["current"]))
        clock.advance(50)
        self.assertIsNone(again.keyRing.findKey(first["current"]))
        # corrupt files are refused, not overwritten
        with open(path, "ab") as f:
            f.write(b"junk\n")
        self.assertRaises(KeyFileError, OnionService, clock, ident, data)

    def test_connectorTarget(self):
        from meshvpn.onion.cells import Create2, Extend2
        from meshvpn.onion.service import linkManagerConnector

        asked = []

        class Manager:
            def getLink(self, target):
                asked.append(target)

        from meshvpn.onion.switch import CircuitSwitch

        ext = Extend2(b"\x01" * 32, (("198.18.0.1", 9001),), ("tls 198.18.0.1:9001", "obfs 198.18.0.1:443"),
                      Create2(2, bytes(96)))
        CircuitSwitch(task.Clock(), b"\x02" * 32, connector=linkManagerConnector(Manager())).connectTo(ext)
        self.assertEqual(asked[0].nodeId, b"\x01" * 32)
        self.assertEqual(asked[0].linkAddresses[:2], (("tls", "198.18.0.1:9001"), ("obfs", "198.18.0.1:443")))


class Runs(unittest.TestCase):
    """The run forms (one AES call for many cells) give exactly what the per-cell forms give."""

    def _backward(self, relays, who, body):
        ct, _ = relays[who].originateBackward(packRelay(RelayCommand.DATA, 1, body))
        for j in range(who - 1, -1, -1):
            ct = relays[j].encryptBackward(ct)
        return ct

    def test_decryptRunMatchesDecrypt(self):
        seeds = [os.urandom(32) for _ in range(3)]
        perCell, run = OriginCrypto(), OriginCrypto()
        for s in seeds:
            perCell.addHop(s)
            run.addHop(s)
        relays = [RelayLayer(s) for s in seeds]
        cells = [self._backward(relays, 1 if i in (3, 7) else (0 if i == 5 else 2), bytes([i]) * 50)
                 for i in range(12)]
        cells[9] = cells[9][:100] + bytes([cells[9][100] ^ 1]) + cells[9][101:]  # tampered
        expected = [perCell.decrypt(c) for c in cells]
        self.assertEqual(run.decryptRun(cells), expected)
        self.assertEqual([e[0] if e else None for e in expected][:10], [2, 2, 2, 1, 2, 0, 2, 1, 2, None])

    def test_originateBackwardRunMatches(self):
        seed = os.urandom(32)
        one, many = RelayLayer(seed), RelayLayer(seed)
        plains = [packRelay(RelayCommand.DATA, 1, bytes([i]) * i) for i in range(20)]
        singles = [one.originateBackward(p) for p in plains]
        joined, tags = many.originateBackwardRun(plains)
        self.assertEqual(joined, b"".join(c for c, _ in singles))
        self.assertEqual(tags, [t for _, t in singles])
        self.assertEqual(one.backCount, many.backCount)

    def test_candidates(self):
        from meshvpn.onion.relaycrypto import candidates

        data = bytearray(os.urandom(509 * 50))
        for k in range(50):
            data[k * 509 + 8] = data[k * 509 + 9] = 1
        for k in (0, 17, 49):
            data[k * 509 + 8] = data[k * 509 + 9] = 0
        data[20 * 509 + 8] = 0  # only one of the two bytes
        self.assertEqual(candidates(bytes(data)), [0, 17, 49])
