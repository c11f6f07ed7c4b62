"""``meshvpn bench link``: cells per second over one TLS link on loopback.

By default both ends live in this process on the real reactor (so they
share one CPU core); with C{--processes} the receiver is a child process.  The sender is a push
producer registered on the link, so it runs exactly as fast as the link's
backpressure lets it; the clock stops when the last cell is delivered.
"""

import json
import os
import sys
import time

from twisted.internet import defer, endpoints, protocol
from zope.interface import implementer

from meshvpn.hostport import formatHostPort
from meshvpn.identity import NodeIdentity
from meshvpn.interfaces import ICellHandler
from meshvpn.link.manager import LinkManager, LinkTarget
from meshvpn.link.transports import TCPTransport
from meshvpn.link.cellsize import CELL_SIZE


@implementer(ICellHandler)
class _Counter:
    def __init__(self, expected):
        self.expected = expected
        self.received = 0
        self.inOrder = True
        self._next = 0
        self.done = defer.Deferred()
        self.opened = defer.Deferred()

    def linkOpened(self, link):
        if not self.opened.called:
            self.opened.callback(link)

    def cellsReceived(self, link, cells):
        # Check sequence numbers at the batch edges only: cheap, still
        # catches loss, duplication and reordering between batches.
        if int.from_bytes(cells[0][:4], "big") != self._next:
            self.inOrder = False
        self.received += len(cells)
        self._next = int.from_bytes(cells[-1][:4], "big") + 1
        if self.received >= self.expected and not self.done.called:
            self.done.callback(self.received)

    def linkClosed(self, link, reason):
        if not self.done.called:
            self.done.errback(reason)


class _Sender:
    """Streams C{total} numbered cells into C{link} as a push producer."""

    def __init__(self, link, total, batch):
        self._link = link
        self._left = total
        self._batch = batch
        self._seq = 0
        self._paused = False
        self._pad = b"\x00" * (CELL_SIZE - 4)
        link.registerProducer(self, True)

    def start(self):
        self._pump()

    def _pump(self):
        link, pad = self._link, self._pad
        while not self._paused and self._left > 0:
            n = min(self._left, self._batch)
            seq = self._seq
            link.sendCells([(seq + i).to_bytes(4, "big") + pad for i in range(n)])
            self._seq += n
            self._left -= n
        if self._left == 0:
            link.unregisterProducer(self)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._pump()

    def stopProducing(self):
        self._left = 0


async def runLinkBench(reactor, cells=100_000, batch=64, bidirectional=False):
    """
    @return: a JSON-able dict: C{cells} moved (both directions summed),
        C{seconds}, C{cells_per_s}, C{mbps} (cell bytes), C{handshake_ms}.
    """
    transports = {"tls": TCPTransport()}
    server = LinkManager(reactor, NodeIdentity.generate(), transports=transports)
    client = LinkManager(reactor, NodeIdentity.generate(), transports=transports)
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.serverFactory("tls"))
    try:
        atServer, atClient = _Counter(cells), _Counter(cells)
        server.setCellHandler(atServer)
        t0 = time.perf_counter()
        link = await client.getLink(LinkTarget(server.identity.nodeId, (("tls", formatHostPort("127.0.0.1", port.getHost().port)),)))
        handshake = time.perf_counter() - t0
        waits = [atServer.done]
        senders = [_Sender(link, cells, batch)]
        if bidirectional:
            back = await atServer.opened  # the responder opens on the initiator's AUTH
            link.setCellReceiver(lambda batch_: atClient.cellsReceived(link, batch_))
            senders.append(_Sender(back, cells, batch))
            waits.append(atClient.done)
        t0 = time.perf_counter()
        for s in senders:
            s.start()
        await defer.gatherResults(waits, consumeErrors=True)
        elapsed = time.perf_counter() - t0
        moved = cells * len(senders)
        inOrder = atServer.inOrder and (atClient.inOrder or not bidirectional)
        link.close("benchmark done")
        await link.whenClosed()
    finally:
        await server.stopService()
        await client.stopService()
        await port.stopListening()
    return {
        "benchmark": "link",
        "transport": "tls",
        "cell_size": CELL_SIZE,
        "cells": moved,
        "batch": batch,
        "bidirectional": bidirectional,
        "in_order": inOrder,
        "seconds": round(elapsed, 4),
        "cells_per_s": round(moved / elapsed),
        "mbps": round(moved * CELL_SIZE * 8 / elapsed / 1e6, 1),
        "handshake_ms": round(handshake * 1000, 2),
    }


class _SinkProcess(protocol.ProcessProtocol):
    """Reads the sink's JSON lines: first where it listens, then when it is done."""

    def __init__(self):
        self.lines = []
        self._buf = b""
        self._waiting = []
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self.lines.append(json.loads(line))
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(self.lines[-1])

    def nextLine(self):
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def processEnded(self, reason):
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(reason)
        self.ended.callback(None)


async def runLinkBenchProcesses(reactor, cells=100_000, batch=64):
    """
    Like L{runLinkBench}, but the receiving end is a separate Python process
    (so each end has its own core): the clock runs from the first cell sent
    to the sink's report that it has them all.
    """
    sink = _SinkProcess()
    reactor.spawnProcess(
        sink, sys.executable, [sys.executable, "-m", "meshvpn.tools.benchlinksink", str(cells)], env=os.environ
    )
    try:
        where = await sink.nextLine()
        client = LinkManager(reactor, NodeIdentity.generate(), transports={"tls": TCPTransport()})
        t0 = time.perf_counter()
        target = LinkTarget(bytes.fromhex(where["node_id"]), (("tls", f"127.0.0.1:{where['port']}"),))
        link = await client.getLink(target)
        handshake = time.perf_counter() - t0
        finished = sink.nextLine()
        t0 = time.perf_counter()
        _Sender(link, cells, batch).start()
        report = await finished
        elapsed = time.perf_counter() - t0
        await client.stopService()
        await sink.ended
    except BaseException:
        if sink.transport is not None and sink.transport.pid:
            sink.transport.signalProcess("KILL")
        raise
    return {
        "benchmark": "link",
        "transport": "tls",
        "processes": 2,
        "cell_size": CELL_SIZE,
        "cells": report["received"],
        "batch": batch,
        "seconds": round(elapsed, 4),
        "cells_per_s": round(report["received"] / elapsed),
        "mbps": round(report["received"] * CELL_SIZE * 8 / elapsed / 1e6, 1),
        "handshake_ms": round(handshake * 1000, 2),
    }


def main(args):
    """Run on the real reactor; print one JSON object (or a line) and return 0."""
    from twisted.internet import reactor

    out = {}

    async def run(reactor):
        if args.processes:
            out.update(await runLinkBenchProcesses(reactor, args.cells, args.batch))
        else:
            out.update(await runLinkBench(reactor, args.cells, args.batch, args.bidirectional))

    d = defer.Deferred.fromCoroutine(run(reactor))
    failures = []
    d.addErrback(failures.append).addBoth(lambda _: reactor.stop())
    reactor.run()
    if failures:
        failures[0].raiseException()
    if args.json:
        print(json.dumps(out))
    else:
        print(f"link over tls: {out['cells_per_s']} cells/s, {out['mbps']} Mbps ({out['cells']} cells in {out['seconds']}s)")
    return 0
