"""Fuzz target: a recognized relay payload (header then body), as a hop decodes it once its layer is off."""

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.fuzz.targets.relaybody import bodySeeds, decodeBody
from meshvpn.onion.cells import PAYLOAD_LEN, CellError, RelayCommand, packRelay, unpackRelay


def _run(data):
    header = unpackRelay(data[:PAYLOAD_LEN].ljust(PAYLOAD_LEN, b"\0"))
    decodeBody(header.command, header.data)


def _seeds():
    out = []
    for command, body in bodySeeds():
        stream = 0 if command in (RelayCommand.EXTEND2, RelayCommand.EXTENDED2, RelayCommand.TRUNCATED,
                                  RelayCommand.PACKET, RelayCommand.PAYMENT,
                                  RelayCommand.FLOW_NEGOTIATE, RelayCommand.FLOW_NEGOTIATED,
                                  *(RelayCommand.MULTIPATH - {RelayCommand.MP_LINK})) else 7
        out.append(packRelay(command, stream, body))
    out.append(packRelay(RelayCommand.DATA, 7, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"))
    return out


TARGET = FuzzTarget("relay", "onion/cells.py unpackRelay + the body it names", (CellError,), _run, _seeds)
