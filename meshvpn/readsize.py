"""How much a bulk connection takes from its socket in one reactor turn.

Twisted reads at most C{bufferSize} bytes (64 KiB) from a socket each time
the reactor finds it readable.  Much of a node's work on a transfer is paid
per read, not per byte: the TLS record loop, parsing the cells, one pass of a
circuit's run through C, one flush and one C{send()} to the next hop or the
application.  A relay that was not scheduled for a while finds more than
64 KiB waiting and, at 64 KiB a turn, pays that per-read work several times
for it.  Reading up to L{BULK_READ} lets one turn take what is there.

Measured on a 3-hop download through real processes on loopback (C{meshvpn
bench throughput}, paired runs; doc/protocol.md, "Per-cell and per-turn
work on a download"): the path's CPU seconds per GB went from 30.4-35.7 at
64 KiB to 26.7-28.5 at 256 KiB.

The same attribute is Twisted's bound on what a connection buffers for
writing before it pauses its producer; that bound is now 256 KiB per
connection instead of 64 KiB, still a fixed bound.
"""

from twisted.internet.abstract import FileDescriptor

BULK_READ = 256 * 1024

# Wrappers between a protocol and its socket: TLS, Twisted's policies wrapper,
# a pluggable transport's layers.  A chain longer than this is not followed.
_MAX_WRAPPERS = 8


def socketOf(transport):
    """
    The L{FileDescriptor} under C{transport}, following C{.transport} through
    wrappers, or C{None} (an in-memory transport, or a chain too long).
    """
    for _ in range(_MAX_WRAPPERS + 1):
        if isinstance(transport, FileDescriptor):
            return transport
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def readInBulk(transport, size=BULK_READ):
    """
    Let the socket under C{transport} be read C{size} bytes at a time.

    @return: whether a socket was found (and changed).
    """
    sock = socketOf(transport)
    if sock is None:
        return False
    sock.bufferSize = size
    return True
