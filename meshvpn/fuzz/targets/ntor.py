"""Fuzz target: a CREATE2 onionskin at the relay (onion/ntor.py serverRespond) and a CREATED2 reply at the client."""

from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.onion import ntor

_RELAY = realmsgs.identity(7)
_SECRET = bytes(_RELAY.onionPrivateKey())


# Fixed ephemeral secrets, so the seed's CREATED2 reply verifies in every run.
_X = bytes(range(32))
_Y = bytes(range(32, 64))


def _findKey(B):
    return _SECRET if B == _RELAY.onionPublicKey else None


def _run(data):
    if data[:1] == b"C":
        # the client reading a relay's Y | AUTH
        state, _ = ntor.clientCreate(_RELAY.nodeId, _RELAY.onionPublicKey, x=_X)
        ntor.clientFinish(state, data[1:])
    else:
        ntor.serverRespond(data[1:], _RELAY.nodeId, _findKey)


def _seeds():
    _, skin = ntor.clientCreate(_RELAY.nodeId, _RELAY.onionPublicKey, x=_X)
    _, reply = ntor.serverRespond(skin, _RELAY.nodeId, _findKey, y=_Y)
    return [b"S" + skin, b"C" + reply]


TARGET = FuzzTarget("ntor", "onion/ntor.py serverRespond / clientFinish (CREATE2 and CREATED2 handshake data)",
                    (ntor.HandshakeError,), _run, _seeds)
