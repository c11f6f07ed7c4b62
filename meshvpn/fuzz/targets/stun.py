"""Fuzz target: a STUN/TURN message (nat/stun.py decode) and every typed attribute value it may carry."""

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.nat import stun

_TID = bytes(range(12))
_KEY = stun.longTermKey("alice", "meshvpn", "secret")
_DECODERS = {
    stun.MAPPED_ADDRESS: stun.decodeAddress,
    stun.RESPONSE_ORIGIN: stun.decodeAddress,
    stun.OTHER_ADDRESS: stun.decodeAddress,
    stun.ERROR_CODE: stun.decodeErrorCode,
    stun.UNKNOWN_ATTRIBUTES: stun.decodeUnknownAttributes,
    stun.CHANGE_REQUEST: stun.decodeChangeRequest,
    stun.RESPONSE_PORT: stun.decodeResponsePort,
    stun.LIFETIME: stun.decodeUint32,
    stun.PRIORITY: stun.decodeUint32,
    stun.CACHE_TIMEOUT: stun.decodeUint32,
}
_XOR = (stun.XOR_MAPPED_ADDRESS, stun.XOR_PEER_ADDRESS, stun.XOR_RELAYED_ADDRESS)


def _run(data):
    msg = stun.StunMessage.decode(data)
    for attrType, value in msg.attributes:
        if attrType in _XOR:
            stun.decodeXorAddress(value, msg.transactionId)
        elif attrType in _DECODERS:
            _DECODERS[attrType](value)
    msg.checkIntegrity(_KEY)
    msg.checkIntegritySha256(_KEY)
    msg.unknownRequired(())


def _seeds():
    binding = stun.StunMessage(stun.BINDING, stun.REQUEST, _TID)
    answer = binding.response().addXorAddress(stun.XOR_MAPPED_ADDRESS, ("198.18.0.7", 40000))
    answer.add(stun.RESPONSE_ORIGIN, stun.encodeAddress(("198.18.0.1", 3478)))
    answer.add(stun.OTHER_ADDRESS, stun.encodeAddress(("2001:db8::1", 3479)))
    rfc5780 = stun.StunMessage(stun.BINDING, stun.REQUEST, _TID)
    rfc5780.add(stun.CHANGE_REQUEST, stun.encodeChangeRequest(True, True))
    rfc5780.add(stun.RESPONSE_PORT, stun.encodeResponsePort(5000))
    rfc5780.add(stun.PADDING, bytes(64))
    error = binding.response(stun.ERROR).addErrorCode(420, "Unknown Attribute")
    error.add(stun.UNKNOWN_ATTRIBUTES, stun.encodeUnknownAttributes([0x0003, 0x0027]))
    allocate = stun.StunMessage(stun.ALLOCATE, stun.REQUEST, _TID)
    allocate.add(stun.REQUESTED_TRANSPORT, bytes([17, 0, 0, 0]))
    allocate.add(stun.LIFETIME, stun.encodeUint32(600))
    allocate.add(stun.USERNAME, b"alice").add(stun.REALM, b"meshvpn").add(stun.NONCE, b"3e8-0123456789abcdef")
    return [
        binding.encode(fingerprint=True),
        answer.encode(fingerprint=True),
        rfc5780.encode(),
        error.encode(),
        allocate.encode(integrityKey=_KEY, integritySha256Key=_KEY, fingerprint=True),
    ]


TARGET = FuzzTarget("stun", "nat/stun.py StunMessage.decode + typed attributes + integrity checks (every STUN/TURN datagram)",
                    (stun.StunParseError,), _run, _seeds)
