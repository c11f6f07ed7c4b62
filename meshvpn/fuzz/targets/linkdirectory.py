"""Fuzz target: DIRECTORY records on a link (link/dirwire.py) as a bridge and a bridged client read them (link/bridgedir.py).

An input is a conversation on one link.  Each record goes either to a
bridge's L{DirectoryChannel} (it answers requests from its own descriptor
and a sample of relays, rate-limited) or to a bridged client's, where a
L{BridgeDirectory} is asking its bridge for the bridge's descriptor and
then for relays.  The client's request ids are random, so the harness may
stamp a record with the id of the request in flight (as a bridge answering
it would); the descriptors a client accepts must carry good signatures.
Neither side may raise: a bad record closes the link it came on.  What the
bridge sends stays within the record and answer bounds, and the client
holds at most one answer's bytes per request.
"""

import struct

from twisted.internet import defer
from twisted.internet.task import Clock

from meshvpn.dht.descriptor import makeDescriptor
from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.link import dirwire
from meshvpn.link.bridgedir import BridgeDirectory, DirectoryChannel
from meshvpn.link.pt.args import BridgeLine, PTAddress
from meshvpn.link.wire import MAX_CONTROL_PAYLOAD

_BRIDGE = realmsgs.identity(30)


def _descriptors():
    own = makeDescriptor(_BRIDGE, {"tls": "198.18.0.30:9001"}, ("guard", "middle"), realmsgs.NOW)
    relays = [makeDescriptor(realmsgs.identity(31 + i), {"tls": f"198.18.0.{31 + i}:9001"},
                             ("guard", "middle", "exit") if i else ("middle",), realmsgs.NOW, exitPolicy="accept 443")
              for i in range(3)]
    return own, relays


_OWN, _RELAYS = _descriptors()


class _Link:
    def __init__(self):
        self.sent = []
        self.closed = None
        self._whenClosed = defer.Deferred()

    def sendDirectory(self, payload):
        if self.closed is not None:
            return False
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise AssertionError(f"a DIRECTORY record of {len(payload)} bytes")
        self.sent.append(payload)
        return True

    def whenClosed(self):
        d = defer.Deferred()
        self._whenClosed.addBoth(lambda r: (d.callback(r), r)[1])
        return d

    def close(self, reason=None):
        if self.closed is None:
            self.closed = reason
            self._whenClosed.callback(reason)


class _Links:
    def __init__(self, link):
        self.link = link

    def getLink(self, target):
        return defer.succeed(self.link)


class _Responder:
    def ownDescriptor(self):
        return _OWN

    def relays(self, count):
        return _RELAYS[:count]


def _checkAnswers(sent):
    """What a bridge sent: whole answers within the bound, each request answered once."""
    body = {}
    for payload in sent:
        chunk = dirwire.decodeRecord(payload)
        body[chunk.requestId] = body.get(chunk.requestId, 0) + len(chunk.chunk)
        if body[chunk.requestId] > dirwire.MAX_RESPONSE:
            raise AssertionError(f"an answer over {dirwire.MAX_RESPONSE} bytes")


def _run(data):
    clock = Clock()
    clock.advance(realmsgs.NOW)
    bridgeLink, clientLink = _Link(), _Link()
    bridge = DirectoryChannel(clock, _Responder())
    client = DirectoryChannel(clock)
    line = BridgeLine("obfs4", PTAddress("198.18.0.30", 443, (("cert", "x"),)), _BRIDGE.nodeId)
    finder = BridgeDirectory(clock, _Links(clientLink), client, [line])
    done = []
    defer.ensureDeferred(finder.refresh()).addBoth(done.append)
    pos = 0
    while pos + 3 <= len(data):
        op, n = data[pos], int.from_bytes(data[pos + 1 : pos + 3], "big") % (MAX_CONTROL_PAYLOAD + 64)
        payload = data[pos + 3 : pos + 3 + n]
        pos += 3 + n
        if op & 1:
            if op & 2 and len(payload) >= 5 and clientLink.sent:
                asked = dirwire.decodeRecord(clientLink.sent[-1]).requestId
                payload = payload[:1] + struct.pack(">I", asked) + payload[5:]
            client.directoryReceived(clientLink, payload)
        else:
            bridge.directoryReceived(bridgeLink, payload)
        if op & 4:
            clock.advance(1)
        if op & 8:
            clock.advance(31)
    clock.advance(120)
    if not done:
        raise AssertionError("the bridged client's refresh never finished")
    _checkAnswers(bridgeLink.sent)
    for descriptor in finder.relays.values():
        if "guard" in descriptor.flags and descriptor.nodeId != _BRIDGE.nodeId:
            raise AssertionError("a relay learned through a bridge is listed as a guard")
    if client._pending:
        raise AssertionError(f"{len(client._pending)} requests still pending after every timeout")


def _frame(payload, op):
    return bytes([op]) + len(payload).to_bytes(2, "big") + payload


def _seeds():
    from meshvpn.dht.descriptor import encodeDescriptor

    # The client's first request asks for the bridge's descriptor, the second for relays.
    selfAnswer = dirwire.encodeResponse(0, dirwire.OK, [encodeDescriptor(_OWN)])
    relaysAnswer = dirwire.encodeResponse(0, dirwire.OK, [encodeDescriptor(d) for d in _RELAYS])
    good = b"".join(_frame(r, 1 | 2) for r in selfAnswer) + b"".join(_frame(r, 1 | 2) for r in relaysAnswer)
    requests = (_frame(dirwire.encodeRequest(7, dirwire.WHAT_SELF), 0) + _frame(dirwire.encodeRequest(8, dirwire.WHAT_RELAYS, 64), 4)
                + _frame(dirwire.encodeRequest(9, dirwire.WHAT_RELAYS, 0), 8))
    refused = _frame(dirwire.encodeResponse(0, dirwire.REFUSED)[0], 1 | 2 | 8)
    return [good, requests, refused + requests]


TARGET = FuzzTarget("link-directory", "link/dirwire.py DIRECTORY records, link/bridgedir.py: a bridge answering, "
                    "a bridged client reading the answers", (), _run, _seeds)
