"""Fakes shared by the VPN tests: a TUN device and a packet-mode circuit that record what they get."""

from zope.interface import implementer

from meshvpn.interfaces import ITunDevice


@implementer(ITunDevice)
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

    def configure(self, addresses=(), routes=(), mtu=None):
        self.addresses = list(addresses)

    def addRoute(self, cidr, table=None, metric=None, mtu=None):
        self.routes.append((cidr, mtu))

    def status(self):
        return {"name": self.name, "mtu": self.mtu}

    def setPacketReceiver(self, r):
        self.receiver = r

    def writePackets(self, packets):
        self.written.extend(packets)

    def close(self):
        self.closed = True


class FakeCircuit:
    path = ()
    streamHandler = None

    def __init__(self):
        self.sent = []

    def sendPackets(self, packets):
        self.sent.extend(packets)
        return len(packets)


class FakeRouteMsg(dict):
    """A pyroute2 route message as L{meshvpn.client.capture.routeRows} reads it."""

    def __init__(self, dst, dst_len, oif, gateway=None, metric=None, proto=4, type=1):
        super().__init__(dst_len=dst_len, proto=proto, type=type, table=254)
        self.attrs = {"RTA_DST": dst, "RTA_OIF": oif, "RTA_GATEWAY": gateway, "RTA_PRIORITY": metric,
                      "RTA_TABLE": 254, "RTA_MULTIPATH": None}

    def get_attr(self, name):
        return self.attrs.get(name)


class FakeIPRoute:
    """
    A main routing table for the route controller: C{routes} holds
    L{FakeRouteMsg}s; C{route("replace"/"del", ...)} edits it as the kernel
    would for host routes, and every call is recorded.
    """

    def __init__(self, routes=()):
        self.routes = list(routes)
        self.calls = []
        self.closed = False

    def get_routes(self, family=None, table=None):
        import socket

        if family is None:
            return list(self.routes)
        return [r for r in self.routes if (":" in (r.get_attr("RTA_DST") or "")) is (family == socket.AF_INET6)]

    def route(self, op, **kw):
        self.calls.append((op, kw))
        dst, _, length = kw["dst"].partition("/")
        same = [r for r in self.routes if (r.get_attr("RTA_DST"), r["dst_len"]) == (dst, int(length))]
        if op in ("replace", "del"):
            self.routes = [r for r in self.routes if not any(r is x for x in same)]
        if op in ("replace", "add"):
            self.routes.append(FakeRouteMsg(dst, int(length), kw["oif"], kw.get("gateway"), proto=kw.get("proto", 3)))

    def hostRoutes(self, proto=196):
        return {r.get_attr("RTA_DST"): (r.get_attr("RTA_OIF"), r.get_attr("RTA_GATEWAY"))
                for r in self.routes if r["proto"] == proto and r["dst_len"] == (128 if ":" in r.get_attr("RTA_DST") else 32)}

    def close(self):
        self.closed = True
