"""DIRECTORY records: a client's questions to the relay at the other end of its link, and the answers.

A client behind a censor may reach nothing but its bridge: no UDP, so no
DHT.  It asks the bridge over the link it already has (authenticated: the
bridge proved its node id) for the bridge's own descriptor, which holds the
onion key a circuit needs, and for a sample of the relay directory the
bridge reads from the DHT.  Every descriptor is signed by its relay, so the
bridge can withhold relays but not forge them (doc/censorship.md).

One record (at most C{MAX_CONTROL_PAYLOAD} bytes):

  request:  0x01 | id u32 | what u8 (1 = your descriptor, 2 = relays) | count u16
  response: 0x02 | id u32 | flags u8 (1 = last chunk) | status u8 | chunk

A response's chunks concatenate to C{u16 length | descriptor} entries.
Answers are bounded (L{MAX_RESPONSE}); anything malformed raises
L{DirectoryWireError}, and the link that sent it is closed.
"""

import struct

import attrs

from meshvpn.errors import LinkError

REQUEST, RESPONSE = 0x01, 0x02
WHAT_SELF, WHAT_RELAYS = 1, 2
OK, REFUSED, UNAVAILABLE = 0, 1, 2
LAST = 0x01
CHUNK = 1000
MAX_RESPONSE = 512 * 1024
MAX_COUNT = 256

_REQ = struct.Struct(">BIBH")
_RESP = struct.Struct(">BIBB")


class DirectoryWireError(LinkError):
    """A DIRECTORY record is malformed or over its bounds."""


@attrs.frozen
class Request:
    requestId: int
    what: int
    count: int


@attrs.frozen
class ResponseChunk:
    requestId: int
    last: bool
    status: int
    chunk: bytes


def encodeRequest(requestId, what, count=0):
    return _REQ.pack(REQUEST, requestId, what, count)


def encodeResponse(requestId, status, entries=()):
    """@return: the records (payloads) answering C{requestId} with C{entries} (descriptor bytes)."""
    body = b"".join(struct.pack(">H", len(e)) + e for e in entries)
    if len(body) > MAX_RESPONSE:
        raise ValueError("response too large")
    chunks = [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]
    return [_RESP.pack(RESPONSE, requestId, LAST if i == len(chunks) - 1 else 0, status) + c
            for i, c in enumerate(chunks)]


def decodeRecord(payload):
    """@return: a L{Request} or L{ResponseChunk}.  @raise DirectoryWireError: malformed."""
    if not payload:
        raise DirectoryWireError("empty DIRECTORY record")
    op = payload[0]
    if op == REQUEST:
        if len(payload) != _REQ.size:
            raise DirectoryWireError(f"DIRECTORY request of {len(payload)} bytes")
        _, requestId, what, count = _REQ.unpack(payload)
        if what not in (WHAT_SELF, WHAT_RELAYS) or count > MAX_COUNT:
            raise DirectoryWireError(f"DIRECTORY request for {what}/{count}")
        return Request(requestId, what, count)
    if op == RESPONSE:
        if len(payload) < _RESP.size:
            raise DirectoryWireError("short DIRECTORY response")
        _, requestId, flags, status = _RESP.unpack_from(payload)
        if flags & ~LAST or status not in (OK, REFUSED, UNAVAILABLE):
            raise DirectoryWireError("DIRECTORY response with unknown flags or status")
        return ResponseChunk(requestId, bool(flags & LAST), status, payload[_RESP.size:])
    raise DirectoryWireError(f"unknown DIRECTORY operation 0x{op:02x}")


def splitEntries(body):
    """C{u16 length | bytes} entries -> list of bytes.  @raise DirectoryWireError: truncated."""
    out, pos = [], 0
    while pos < len(body):
        if len(body) - pos < 2:
            raise DirectoryWireError("truncated DIRECTORY entry length")
        (n,) = struct.unpack_from(">H", body, pos)
        pos += 2
        if n == 0 or len(body) - pos < n:
            raise DirectoryWireError("truncated or empty DIRECTORY entry")
        out.append(body[pos:pos + n])
        pos += n
    return out
