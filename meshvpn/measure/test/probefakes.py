"""In-memory links for the probe tests: two ends on one clock, each record delivered after a delay."""

import attrs


@attrs.define(eq=False)
class FakeLink:
    clock: object
    peerId: bytes
    handler: object = None  # what gets probeReceived(link, seq, data, echo) at the *other* end
    delay: float = 0.01
    version: int = 5
    blocked: bool = False
    other: object = None
    sent: int = 0
    mangle: object = None  # data -> data, applied to what this end sends

    def sendProbe(self, seq, data, echo=False):
        if self.blocked or self.version < 5:
            return False
        self.sent += 1
        if self.mangle is not None:
            data = self.mangle(data)
        other = self.other
        self.clock.callLater(self.delay, lambda: other.handler.probeReceived(other, seq, data, echo))
        return True


def linkPair(clock, a, b, aHandler, bHandler, delay=0.01):
    """@return: (a's end, with peer b; b's end, with peer a)."""
    ab = FakeLink(clock, b, handler=aHandler, delay=delay)
    ba = FakeLink(clock, a, handler=bHandler, delay=delay)
    ab.other, ba.other = ba, ab
    return ab, ba


@attrs.define
class Descriptor:
    nodeId: bytes
    addresses: tuple = (("tls", "127.0.0.1:9001"),)
    family: tuple = ()
    flags: frozenset = frozenset({"middle"})


class Echoes:
    """A probe handler that hands echoes to one stream and probes to one echo (a ProbeService's routing)."""

    def __init__(self, stream=None, echo=None):
        self.stream, self.echo = stream, echo

    def probeReceived(self, link, seq, data, echo):
        if echo:
            self.stream.echoReceived(seq, data)
        else:
            self.echo.probeReceived(link, seq, data)
