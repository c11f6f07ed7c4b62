"""`meshvpn bench exit-begin`: the exit's BEGIN -> CONNECTED step alone, in process, on the real reactor.

On the loopback testnet this step (the exit's TCP connect included) was the
largest single step of a stream's first byte.  Here the exit's own stream
edge (L{meshvpn.exit.streams.ExitStreamEdge}, with the budget, policy and
connector a relay builds) takes BEGINs for an IP literal on loopback, one
at a time, and the time from the BEGIN cell's delivery to the CONNECTED
cell's hand-off to the circuit is taken for each.  The target is a TCP
server in a child process, as a web server would be: an in-process server's
accept would be counted as the exit's work.

Prints the median and spread in microseconds, and the share of BEGINs
answered in the very call that delivered them (no reactor turn between:
L{meshvpn.exit.connectnow}).
"""

import statistics
import subprocess
import sys
import time

from twisted.internet import defer, task

from meshvpn.exit.settings import buildExit
from meshvpn.exit.streams import ExitStreamEdge
from meshvpn.onion.cells import RelayCommand
from meshvpn.onion.endreasons import EndReason
from meshvpn.onion.streammsgs import Begin
from meshvpn.tools.benchoutput import report

_SERVER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(512)
print(s.getsockname()[1], flush=True)
while True:
    s.accept()[0].close()
"""

_SETTINGS = {"exit_policy": "accept 127.0.0.1:*", "exit_reject_private": False, "exit_dns": ("127.0.0.1", 53),
             "exit_ipv6": False, "bandwidth_rate": None, "bandwidth_burst": None, "circuit_rate": None,
             "circuit_burst": None}


def addArguments(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--begins", type=int, default=500, help="BEGINs to time (default 500)")


class _Circuit:
    """The exit's side of a circuit, as the edge sees it: CONNECTED and END are noted, nothing is sent."""

    maxData = 488
    flowFlags = 0
    edgeState = None
    prev = None

    def __init__(self):
        self.answered = None

    @staticmethod
    def circuitRoom():
        return 1000

    def sendRelay(self, command, streamId, body):
        if command in (RelayCommand.CONNECTED, RelayCommand.END) and self.answered is not None:
            answered, self.answered = self.answered, None
            answered.callback((command, time.perf_counter()))


async def measure(reactor, begins=500, warmup=20):
    """@return: the figures, as a dict."""
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE)
    try:
        port = int(server.stdout.readline())
        edge = ExitStreamEdge(buildExit(reactor, _SETTINGS))
        circuit = _Circuit()
        body = Begin("127.0.0.1", port).encode()
        times, sameCall = [], 0
        for i in range(warmup + begins):
            await task.deferLater(reactor, 0.001, lambda: None)  # each BEGIN in a turn of its own
            answered = circuit.answered = defer.Deferred()
            started = time.perf_counter()
            edge.relayReceived(circuit, RelayCommand.BEGIN, i + 1, body)
            inCall = answered.called
            command, at = await answered
            if command != RelayCommand.CONNECTED:
                raise RuntimeError(f"the exit refused a BEGIN to its loopback server ({command})")
            circuit.edgeState.streams[i + 1].close(EndReason.DONE)
            if i >= warmup:
                times.append((at - started) * 1e6)
                sameCall += inCall
    finally:
        server.kill()
        server.wait()
        server.stdout.close()
    times.sort()
    return {
        "begins": len(times),
        "begin_to_connected_us_median": round(statistics.median(times), 1),
        "begin_to_connected_us_p10": round(times[len(times) // 10], 1),
        "begin_to_connected_us_p90": round(times[(9 * len(times)) // 10], 1),
        "answered_in_the_same_call": round(sameCall / len(times), 3),
    }


def run(args):
    from twisted.internet import reactor

    out, failure = {}, []

    def go():
        d = defer.ensureDeferred(measure(reactor, args.begins))
        d.addCallbacks(out.update, failure.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    if failure:
        print(failure[0].getTraceback(), file=sys.stderr)
        return 1
    report(out, args.json)
    return 0
