"""Fuzz target: cells through a CGO hop (onion/cgo.py, onion/cgohops.py), then the relay message they carry.

Both directions of one hop: a relay's L{CgoRelayHop} takes cells away from
the origin, the origin's L{CgoOriginView} takes cells toward it.  An input
is a sequence of cells (command byte, 509 bytes); each is either the
fuzzer's bytes as they come (a hostile neighbour: almost never
recognized, passed on) or a 493-byte body the harness seals with the
other end's layer first (a hostile far end that shares the keys: the body
is recognized, and everything in it is the fuzzer's).  A recognized cell
goes through C{fromCell} (the 488-byte limit) and the relay payload parser
and body decoders (L{meshvpn.fuzz.targets.relaybody.decodeBody}).  When
every cell was made by the other end, the two ends must still be in step
afterwards: a real message each way is recognized.
"""

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.fuzz.targets.relaybody import decodeBody
from meshvpn.onion import cgo
from meshvpn.onion.cells import CGO_BODY_AT, CGO_BODY_LEN, PAYLOAD_LEN, CellError, RelayCommand, packRelay, unpackRelay
from meshvpn.onion.cgohops import CgoOriginView, CgoRelayHop, toBody

_MATERIAL = bytes(range(cgo.KEY_MATERIAL_LEN))
_COMMANDS = (b"\x03", b"\x09")  # RELAY, RELAY_EARLY: the cell command byte CGO binds into the tag


def _deliver(payload):
    header = unpackRelay(payload)
    decodeBody(header.command, header.data)


def _run(data):
    relay, origin = CgoRelayHop(_MATERIAL), CgoOriginView(_MATERIAL)
    forged = False  # a cell the other end did not make: CGO's chained tags rightly leave the ends out of step
    pos = 0
    while pos < len(data):
        op = data[pos]
        chunk = data[pos + 1 : pos + 1 + (CGO_BODY_LEN if op & 2 else PAYLOAD_LEN)]
        pos += 1 + len(chunk)
        cmd = _COMMANDS[op & 1]
        toOrigin = bool(op & 4)
        if op & 2:  # the far end seals a body of the fuzzer's choosing
            body = chunk.ljust(CGO_BODY_LEN, b"\0")
            if toOrigin:
                cell, _ = relay._layer.originate(b"\x03", body)
            else:
                cell, _ = origin._hop.seal(cmd, body)
        else:
            cell = chunk.ljust(PAYLOAD_LEN, b"\0")
            forged = True
        out = None
        try:
            if toOrigin:
                out, tag = origin.unwrap(b"\x03", cell)
            else:
                out, tag = relay.forward(cmd, cell)
            if tag is not None:
                _deliver(out)
        except CellError:
            # the circuit closes: a fresh pair for the rest of the input
            relay, origin = CgoRelayHop(_MATERIAL), CgoOriginView(_MATERIAL)
            forged = False
        # a cell passed on keeps the cell's size; a recognized one is the common layout's first 503 bytes
        if out is not None and len(out) != (CGO_BODY_AT + CGO_BODY_LEN if tag is not None else PAYLOAD_LEN):
            raise AssertionError(f"a CGO hop produced {len(out)} bytes")
    if forged:
        return
    # nothing forged: both ends still agree, a real message each way is recognized
    plain = packRelay(RelayCommand.DATA, 1, b"still in step")
    sealed, _ = origin.sealFor(b"\x03", plain)
    got, tag = relay.forward(b"\x03", sealed)
    if tag is None or got[CGO_BODY_AT:] != plain[CGO_BODY_AT : CGO_BODY_AT + CGO_BODY_LEN]:
        raise AssertionError("the origin and the relay lost step")
    back, _ = relay.originateBackward(plain)
    got, tag = origin.unwrap(b"\x03", back)
    if tag is None or got[CGO_BODY_AT:] != plain[CGO_BODY_AT : CGO_BODY_AT + CGO_BODY_LEN]:
        raise AssertionError("the relay and the origin lost step backward")


def _seeds():
    data = toBody(packRelay(RelayCommand.DATA, 7, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"))
    begin = toBody(packRelay(RelayCommand.BEGIN, 7, b"example.com:443\0"))
    end = toBody(packRelay(RelayCommand.END, 7, b"\x06"))
    return [bytes([2 | 1]) + begin + bytes([2]) + data + bytes([2 | 4]) + end + bytes([0]) + bytes(range(256)) * 2,
            bytes([4]) + bytes(PAYLOAD_LEN) + bytes([2]) + bytes(CGO_BODY_LEN)]


TARGET = FuzzTarget("cgo", "onion/cgo.py + cgohops.py: cells through a CGO hop both ways, recognized bodies parsed "
                    "(fromCell, unpackRelay, the relay bodies)", (CellError,), _run, _seeds)
