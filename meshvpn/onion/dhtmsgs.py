"""The bodies of DHT_SEND, DHT_RECEIVED and DHT_REFUSED: one DHT datagram carried on a circuit.

A client that reads the directory through circuits hands each DHT datagram
to the last hop of a short circuit, which sends it from its own DHT socket
and returns the answer the same way (L{meshvpn.onion.dhtrelay}).  A DHT
datagram (up to 1400 bytes) is longer than one relay message, so it travels
as a run of pieces, sent back to back on one circuit (cells on a circuit
keep their order, so nothing interleaves them)::

    piece:  index (1 byte) | count (1 byte) | [address, first piece only] | bytes of the datagram
    address: family (4 or 6) | 4 or 16 address bytes | port (2 bytes)

In DHT_SEND the address is where the datagram goes; in DHT_RECEIVED, where
the answer came from.  DHT_REFUSED's body is one reason byte (L{REFUSALS}):
the last hop says it dropped a datagram, and the client counts it.

L{Reassembler} takes pieces of one direction of one circuit and gives back
whole datagrams; it holds at most one datagram in progress, so a peer
cannot make it grow.  Every malformed piece raises L{DatagramMessageError}.
"""

import ipaddress
import struct

from meshvpn.onion.cells import CellError

MAX_DATAGRAM = 1400  # the DHT's own cap (meshvpn.dht.wire.MAX_DATAGRAM): nothing longer is a DHT message
MAX_PIECES = 4  # 1400 bytes in pieces of at least 488 - 2 - 19
_PORT = struct.Struct("!H")

# DHT_REFUSED reasons
NOT_DHT = 1  # not a DHT request a client may send (malformed, an answer, a STORE, not marked client)
NOT_A_NODE = 2  # the destination is no DHT node this relay knows of
RATE_LIMITED = 3  # over the circuit's or the relay's rate, or too many answers outstanding
REFUSALS = {NOT_DHT: "not a client DHT request", NOT_A_NODE: "destination is not a known DHT node",
            RATE_LIMITED: "over the relay's DHT rate"}


class DatagramMessageError(ValueError):
    """A DHT_SEND / DHT_RECEIVED / DHT_REFUSED body is malformed; the text says why (no payload)."""


def encodeAddress(addr):
    host, port = addr
    ip = ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise DatagramMessageError(f"port {port} out of range")
    return bytes([ip.version]) + ip.packed + _PORT.pack(port)


def decodeAddress(data, off):
    """@return: C{((host, port), offset after it)}."""
    if off >= len(data):
        raise DatagramMessageError("no address")
    family = data[off]
    size = {4: 4, 6: 16}.get(family)
    if size is None:
        raise DatagramMessageError(f"address family {family} is neither 4 nor 6")
    end = off + 1 + size + 2
    if end > len(data):
        raise DatagramMessageError("address cut short")
    host = str(ipaddress.ip_address(bytes(data[off + 1:off + 1 + size])))
    (port,) = _PORT.unpack_from(data, off + 1 + size)
    if port == 0:
        raise DatagramMessageError("port 0")
    return (host, port), end


def encodePieces(datagram, addr, room):
    """
    The bodies carrying C{datagram} to or from C{addr}, each at most
    C{room} bytes (the circuit's C{maxData}).
    """
    if not datagram or len(datagram) > MAX_DATAGRAM:
        raise DatagramMessageError(f"a datagram of {len(datagram)} bytes (1 to {MAX_DATAGRAM})")
    head = encodeAddress(addr)
    chunks = [datagram[:room - 2 - len(head)]]
    rest = datagram[len(chunks[0]):]
    while rest:
        chunks.append(rest[:room - 2])
        rest = rest[room - 2:]
    if len(chunks) > MAX_PIECES:
        raise DatagramMessageError("too many pieces")
    n = len(chunks)
    return [bytes([i, n]) + (head if i == 0 else b"") + c for i, c in enumerate(chunks)]


class Reassembler:
    """Whole datagrams from the pieces of one direction of one circuit, one in progress at most."""

    __slots__ = ("_addr", "_parts", "_count", "_size")

    def __init__(self):
        self._addr = None
        self._parts = []
        self._count = 0
        self._size = 0

    def feed(self, body):
        """
        @return: C{(datagram, addr)} once the last piece arrives, else C{None}.
        @raise DatagramMessageError: the piece does not continue the datagram in progress.
        """
        if len(body) < 3:
            raise DatagramMessageError("piece shorter than its header")
        index, count = body[0], body[1]
        if not 1 <= count <= MAX_PIECES or index >= count:
            raise DatagramMessageError(f"piece {index} of {count}")
        if index == 0:
            if self._parts:
                self._reset()
                raise DatagramMessageError("a new datagram before the last one ended")
            addr, off = decodeAddress(body, 2)
            self._addr, self._count = addr, count
        elif index != len(self._parts) or count != self._count:
            self._reset()
            raise DatagramMessageError(f"piece {index} of {count} out of order")
        else:
            off = 2
        chunk = bytes(body[off:])
        if not chunk:
            self._reset()
            raise DatagramMessageError("empty piece")
        self._size += len(chunk)
        if self._size > MAX_DATAGRAM:
            self._reset()
            raise DatagramMessageError(f"datagram longer than {MAX_DATAGRAM} bytes")
        self._parts.append(chunk)
        if len(self._parts) < self._count:
            return None
        done = (b"".join(self._parts), self._addr)
        self._reset()
        return done

    def feedCell(self, body, counters, counter, command):
        """
        L{feed}, for a cell handler at either end: a malformed piece is
        counted under C{counters[counter]} and closes only its circuit.

        @raise CellError: the piece was malformed (C{command} names the cell).
        """
        try:
            return self.feed(body)
        except DatagramMessageError as e:
            counters[counter] += 1
            raise CellError(f"{command}: {e}") from None

    def _reset(self):
        self._addr, self._parts, self._count, self._size = None, [], 0, 0


def encodeRefusal(reason):
    return bytes([reason])


def decodeRefusal(body):
    if len(body) != 1 or body[0] not in REFUSALS:
        raise DatagramMessageError("DHT_REFUSED body is not one known reason byte")
    return body[0]
