"""The receiving process of ``meshvpn bench link --processes``.

Listens for one link on loopback, prints ``{"node_id", "port"}`` as a JSON
line, counts cells, prints ``{"received"}`` once it has the expected number
and exits.  Run as ``python -m meshvpn.tools.benchlinksink CELLS``.
"""

import json
import sys

from twisted.internet import defer, endpoints
from zope.interface import implementer

from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import ICellHandler
from meshvpn.link.manager import LinkManager
from meshvpn.link.transports import TCPTransport


@implementer(ICellHandler)
class _Sink:
    def __init__(self, expected, done):
        self.expected, self.received, self.done = expected, 0, done

    def linkOpened(self, link):
        pass

    def cellsReceived(self, link, cells):
        self.received += len(cells)
        if self.received >= self.expected and not self.done.called:
            self.done.callback(self.received)

    def linkClosed(self, link, reason):
        if not self.done.called:
            self.done.errback(reason)


async def _run(reactor, expected):
    manager = LinkManager(reactor, NodeIdentity.generate(), transports={"tls": TCPTransport()})
    done = defer.Deferred()
    manager.setCellHandler(_Sink(expected, done))
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(manager.serverFactory("tls"))
    print(json.dumps({"node_id": manager.identity.nodeId.hex(), "port": port.getHost().port}), flush=True)
    received = await done
    print(json.dumps({"received": received}), flush=True)
    await manager.stopService()
    await port.stopListening()


def main(argv=None):
    from twisted.internet import task

    expected = int((argv or sys.argv[1:])[0])
    task.react(lambda reactor: defer.Deferred.fromCoroutine(_run(reactor, expected)))


if __name__ == "__main__":
    main()
