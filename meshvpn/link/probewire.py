"""The PROBE record's body (link record 0x09, link version 5): a capacity probe's bytes and their echo.

A measurer fills a link with PROBE records of random bytes; the target
sends each back unchanged as an echo, on the same link, if the epoch's
probe plan assigns that measurer to it (meshvpn/measure/probeecho.py).
The random bytes mean a target cannot echo what it did not receive; the
sequence number lets the measurer match an echo to what it sent.

Body (network byte order), one encoding only:

    kind u8 (0 probe, 1 echo) | sequence u32 | data (1..MAX_DATA bytes)
"""

import struct

from meshvpn.link.wire import PROBE, LinkProtocolError, encodeControl

KIND_PROBE = 0
KIND_ECHO = 1
MAX_DATA = 1000  # bytes of random data in one record (the body stays under MAX_CONTROL_PAYLOAD)
_HEAD = struct.Struct("!BI")


def encodeProbe(seq, data, echo=False):
    """The whole PROBE record carrying C{data} under C{seq}."""
    if not 0 <= seq < 2**32 or not 1 <= len(data) <= MAX_DATA:
        raise ValueError("bad PROBE record")
    return encodeControl(PROBE, _HEAD.pack(KIND_ECHO if echo else KIND_PROBE, seq) + bytes(data))


def decodeProbe(payload):
    """
    @return: C{(seq, data, echo)}.
    @raise LinkProtocolError: an unknown kind, no data or too much.
    """
    if len(payload) < _HEAD.size + 1:
        raise LinkProtocolError(f"PROBE body of {len(payload)} bytes")
    if len(payload) > _HEAD.size + MAX_DATA:
        raise LinkProtocolError(f"PROBE body of {len(payload)} bytes (at most {_HEAD.size + MAX_DATA})")
    kind, seq = _HEAD.unpack_from(payload)
    if kind not in (KIND_PROBE, KIND_ECHO):
        raise LinkProtocolError(f"PROBE of unknown kind {kind}")
    return seq, payload[_HEAD.size :], kind == KIND_ECHO
