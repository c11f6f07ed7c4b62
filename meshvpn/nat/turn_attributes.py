"""The address-family attributes of TURN (RFC 8656): asking for an IPv6 (or a second) relayed address.

A TURN client asks for the family of its relayed address with
REQUESTED-ADDRESS-FAMILY (IPv4 when absent), or for an IPv4 and an IPv6
address at once with ADDITIONAL-ADDRESS-FAMILY (whose value must be IPv6).
A server that grants only the first of two says why the other is missing in
ADDRESS-ERROR-CODE.  These come from anyone, before authentication, so each
decoder checks lengths and values exactly and raises L{StunParseError}.
"""

import struct

from meshvpn.nat import stun

ADDRESS_ERROR_CODE = 0x8001  # RFC 8656 18.14 (comprehension-optional)
FAMILIES = {stun.FAMILY_IPV4: 4, stun.FAMILY_IPV6: 6}
_WIRE = {4: stun.FAMILY_IPV4, 6: stun.FAMILY_IPV6}


class UnsupportedFamily(stun.StunParseError):
    """A well-formed family attribute naming a family other than IPv4 or IPv6 (answered with 440)."""


def familyOf(host):
    """4 or 6 for an address string."""
    return 6 if ":" in host else 4


def encodeFamily(family):
    """REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY value: the family byte and 3 reserved bytes."""
    return struct.pack("!B3x", _WIRE[family])


def decodeFamily(value):
    """@return: 4 or 6.  @raise StunParseError: not 4 bytes; L{UnsupportedFamily}: another family."""
    if len(value) != 4:
        raise stun.StunParseError(f"address family attribute of {len(value)} bytes (must be 4)")
    family = FAMILIES.get(value[0])
    if family is None:
        raise UnsupportedFamily(f"address family {value[0]:#04x}")
    return family


def encodeAddressError(family, code, reason):
    """ADDRESS-ERROR-CODE: family, reserved, then an ERROR-CODE's class, number and reason."""
    return struct.pack("!BB", _WIRE[family], 0) + stun.encodeErrorCode(code, reason)[2:]


def decodeAddressError(value):
    """@return: C{(family, code, reason)}.  @raise StunParseError: malformed."""
    if len(value) < 4:
        raise stun.StunParseError("ADDRESS-ERROR-CODE shorter than 4 bytes")
    family = FAMILIES.get(value[0])
    if family is None:
        raise stun.StunParseError(f"ADDRESS-ERROR-CODE of family {value[0]:#04x}")
    code, reason = stun.decodeErrorCode(b"\x00\x00" + value[2:])
    return family, code, reason
