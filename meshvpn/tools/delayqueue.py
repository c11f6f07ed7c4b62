"""Hold packets in the kernel for D ms, then let them go: a netfilter queue (NFQUEUE) delay line.

This kernel has no ``netem``, so `meshvpn bench throughput --delay-ms D` puts
real one-way delay on TCP hops this way: an nftables rule sends the chosen
packets to queue N, and this daemon (one process, root, in the benchmark's
own network namespace) is told of each packet by ``nfnetlink_queue`` and
accepts it D ms after it arrived.  Every packet waits the same D, so release
is first in, first out, and one batch verdict ("accept every packet up to
id I") releases all that are due: one system call per release, whatever
the packet rate.  The packets never leave the kernel (copy mode META: the
daemon sees ids, not contents), and the kernel's TCP on both ends sees the
delay as it would on a real path: its windows, its ACK clock and its
retransmissions are real.

The rule sits on the *input* hook: a loopback packet there has already left
its sender's socket accounting (loopback orphans it on transmit), so TCP's
small-queue limit does not count packets held here as unsent, exactly as on
a wire.  The queue is bounded (C{--max-queue} packets); past it the kernel
drops packets (no fail-open: nothing may skip the delay), and the daemon
reports how many it saw.

The netlink protocol is small enough to speak directly (linux/netfilter/
nfnetlink_queue.h); no library is needed.

Run: ``python -m meshvpn.tools.delayqueue --queue N --delay-ms D`` inside
the namespace; it prints ``ready`` once bound and exits on SIGTERM.
"""

import argparse
import collections
import errno
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


def _attr(kind, value):
    n = _NLA.size + len(value)
    return _NLA.pack(n, kind) + value + bytes(-n % 4)


def _message(msgType, queue, attrs, flags=NLM_F_REQUEST, seq=0):
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", queue) + b"".join(attrs)
    return _NLMSG.pack(_NLMSG.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msgType, flags, seq, 0) + body


def configMessage(queue, command=None, copyMode=None, maxLen=None, seq=0):
    attrs = []
    if command is not None:
        attrs.append(_attr(NFQA_CFG_CMD, struct.pack("!BBH", command, 0, socket.AF_INET)))
    if copyMode is not None:
        attrs.append(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, copyMode)))
    if maxLen is not None:
        attrs.append(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxLen)))
    return _message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK, seq)


def verdictBatch(queue, lastId):
    """Accept every packet of C{queue} with an id up to C{lastId}."""
    return _message(NFQNL_MSG_VERDICT_BATCH, queue, [_attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, lastId))])


def parseMessages(data):
    """
    @return: C{(packet ids, errors)} in the netlink messages of C{data}:
        the ids of queued packets, and the error codes of acknowledgements.
    """
    ids, errors = [], []
    pos, end = 0, len(data)
    while pos + _NLMSG.size <= end:
        length, msgType, _flags, _seq, _pid = _NLMSG.unpack_from(data, pos)
        if length < _NLMSG.size or pos + length > end:
            break
        if msgType == NLMSG_ERROR and length >= _NLMSG.size + 4:
            errors.append(-struct.unpack_from("=i", data, pos + _NLMSG.size)[0])
        elif msgType == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = pos + _NLMSG.size + 4  # past nfgenmsg
            stop = pos + length
            while at + _NLA.size <= stop:
                n, kind = _NLA.unpack_from(data, at)
                if n < _NLA.size or at + n > stop:
                    break
                if kind & 0x3FFF == NFQA_PACKET_HDR and n >= _NLA.size + 4:
                    ids.append(struct.unpack_from("!I", data, at + _NLA.size)[0])
                    break
                at += (n + 3) & ~3
        pos += (length + 3) & ~3
    return ids, errors


class DelayLine:
    """One bound queue and the packets it holds, in arrival order."""

    def __init__(self, queue, delay, maxQueue=100_000):
        self.queue = queue
        self.delay = delay
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))
        self._request(configMessage(queue, command=NFQNL_CFG_CMD_BIND, seq=1))
        self._request(configMessage(queue, copyMode=NFQNL_COPY_META, maxLen=maxQueue, seq=2))
        self.sock.setblocking(False)
        self.held = collections.deque()  # (release time, packet id)
        self.packets = 0
        self.maxHeld = 0

    def _request(self, message):
        self.sock.send(message)
        ids, errors = parseMessages(self.sock.recv(65536))
        if not errors or errors[0] != 0:
            code = errors[0] if errors else 0
            raise OSError(code, f"nfnetlink_queue config refused: {os.strerror(code) if code else 'no answer'}")

    def run(self, stop):
        sock, held, delay = self.sock, self.held, self.delay
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while not stop():
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else 0.5
            readable, _, _ = select.select([sock], [], [], timeout)
            now = time.monotonic()
            if readable:
                due = now + delay
                while True:
                    try:
                        n = sock.recv_into(buf)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno == errno.ENOBUFS:
                            continue
                        raise
                    ids, _ = parseMessages(view[:n])
                    for i in ids:
                        held.append((due, i))
                    self.packets += len(ids)
                if len(held) > self.maxHeld:
                    self.maxHeld = len(held)
            last = None
            while held and held[0][0] <= now:
                last = held.popleft()[1]
            if last is not None:
                sock.send(verdictBatch(self.queue, last))

    def close(self):
        if self.held:  # let what is held go rather than drop it
            self.sock.send(verdictBatch(self.queue, self.held[-1][1]))
            self.held.clear()
        try:
            self.sock.setblocking(True)
            self.sock.send(configMessage(self.queue, command=NFQNL_CFG_CMD_UNBIND, seq=3))
        except OSError:
            pass
        self.sock.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queue", type=int, required=True, help="netfilter queue number")
    p.add_argument("--delay-ms", type=float, required=True, help="one-way delay added to every queued packet")
    p.add_argument("--max-queue", type=int, default=100_000, help="packets the kernel holds before it drops")
    args = p.parse_args(argv)
    line = DelayLine(args.queue, args.delay_ms / 1000.0, args.max_queue)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    print("ready", flush=True)
    try:
        line.run(lambda: bool(stopping))
    finally:
        line.close()
        print(f"packets {line.packets} max_held {line.maxHeld}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
