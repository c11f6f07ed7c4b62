"""Fakes shared by the VPN tests: a TUN device and a packet-mode circuit that record what they get."""


class FakeTun:
    """An ITunDevice that records what it is asked (the client's and the exit's tests share it)."""

    name = "mvpn0"
    index = 7

    def __init__(self, reactor, name, mtu):
        self.mtu = mtu
        self.written = []
        self.receiver = None
        self.routes = []
        self.closed = False

    def configure(self, addresses=()):
        self.addresses = list(addresses)

    def addRoute(self, cidr, mtu=None):
        self.routes.append((cidr, mtu))

    def setPacketReceiver(self, r):
        self.receiver = r

    def writePackets(self, packets):
        self.written.extend(packets)

    def close(self):
        self.closed = True


class FakeCircuit:
    def __init__(self):
        self.sent = []

    def sendPackets(self, packets):
        self.sent.extend(packets)
        return len(packets)
