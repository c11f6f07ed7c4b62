"""Signed, expiring relay descriptors: what the DHT says about a relay.

A descriptor tells a client everything it needs to pick a relay and reach it:
node id, identity key, onion keys with their validity, addresses per
transport, roles/flags, exit policy summary, bandwidth, family, and when it
was published and expires.  It is signed by the relay's Ed25519 identity key
and has exactly one encoding (fields in a fixed order, lists sorted, no
trailing bytes): the parser re-encodes what it read and rejects anything
that differs, so two byte strings never mean the same descriptor.  The byte
layout is in doc/protocol.md ("Relay descriptors").

The exit policy summary is Tor's text (up to 1000 characters, as Tor
allows) but travels in the compact form of L{meshvpn.dht.policysummary}, so
even the longest summary fits one DHT record with the rest of the
descriptor (magic C{MVD2}; C{MVD1} carried the text, at most 256
characters, and an exit with a longer summary, such as Tor's
ReducedExitPolicy, could never publish).

A relay that speaks more than the classic circuit handshake lists what it
speaks in C{handshakes} (circuit handshake types and relay crypto schemes,
L{meshvpn.onion.circhandshake}); such a descriptor has magic C{MVD3} and
the list after the family.  A C{MVD2} descriptor has no list and means
classic only (ntor, the original relay crypto), so a relay with nothing to
add still publishes what older nodes parse.

The same list carries the relay's other capabilities by name, because a
node of any release parses a name it does not know (a new flag bit would
make older nodes reject the whole descriptor): L{IPV6_EXIT} (the exit
carries IPv6 destinations) and C{circuit-N} for each circuit protocol
version N > 1 it speaks (none listed: version 1 only; see
L{meshvpn.onion.circversions}).  A dual-stack relay lists two C{udp}
addresses (one per family) and may list a link transport twice.
"""

import hashlib
import re
import struct

import attrs
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from meshvpn.dht.policysummary import MAX_SUMMARY_LEN, SummaryError, decodeSummary, encodeSummary

MAGIC = b"MVD2"
MAGIC_HANDSHAKES = b"MVD3"  # MAGIC's layout plus the handshakes list
MAX_HANDSHAKES = 8
IPV6_EXIT = "ipv6-exit"  # in handshakes: this exit carries traffic to IPv6 destinations
SIG_DOMAIN = b"meshvpn-descriptor-v1\x00"
MAX_LIFETIME = 24 * 3600
MAX_ONION_KEYS = 2
MAX_ADDRESSES = 8
MAX_FAMILY = 8
MAX_POLICY = MAX_SUMMARY_LEN  # characters of summary text (Tor's limit)
MAX_ADDRESS_LEN = 128
FLAGS = ("guard", "middle", "exit", "stun", "nat-relay", "bootstrap", "packet-exit")
_FLAG_BITS = {name: 1 << i for i, name in enumerate(FLAGS)}
_TRANSPORT = re.compile(rb"[a-z0-9][a-z0-9-]{0,15}\Z")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*\Z")
_U8, _U16, _U64 = struct.Struct("!B"), struct.Struct("!H"), struct.Struct("!Q")


class DescriptorError(ValueError):
    """A descriptor is malformed, not canonical, expired or badly signed; the text says which."""


@attrs.frozen
class OnionKey:
    key: bytes  # 32-byte X25519 public key
    validAfter: int  # Unix seconds
    validUntil: int


@attrs.frozen
class RelayDescriptor:
    """
    One relay's descriptor.  C{addresses} is a tuple of C{(transport, address)}
    pairs, e.g. C{("udp", "198.18.0.1:9000")}, C{("tcp", "198.18.0.1:9001")};
    C{flags} a frozenset of names from L{FLAGS}; C{family} a tuple of node ids.
    """

    nodeId: bytes
    identityKey: bytes
    onionKeys: tuple
    addresses: tuple
    flags: frozenset
    exitPolicy: str
    bandwidth: int  # advertised, bytes per second
    family: tuple
    published: int
    expires: int
    signature: bytes = b""
    handshakes: tuple = ()  # sorted names, e.g. ("cgo", "ntor", "ntor3", "ntor3-mlkem768"); () = classic only

    def address(self, transport):
        """@return: the first address for C{transport}, or C{None}."""
        for t, a in self.addresses:
            if t == transport:
                return a
        return None

    @property
    def linkAddresses(self):
        """C{(transport, address)} pairs that carry links (all but the raw UDP socket), for the link manager."""
        return tuple((t, a) for t, a in self.addresses if t != "udp")

    def currentOnionKey(self, now):
        """@return: the onion key valid at C{now}, or C{None}."""
        for k in self.onionKeys:
            if k.validAfter <= now < k.validUntil:
                return k.key
        return None

    def toJSON(self):
        """A JSON-ready summary (public fields only; it holds no secret)."""
        return {
            "node_id": self.nodeId.hex(),
            "identity_key": self.identityKey.hex(),
            "onion_keys": [
                {"key": k.key.hex(), "valid_after": k.validAfter, "valid_until": k.validUntil} for k in self.onionKeys
            ],
            "addresses": {t: a for t, a in reversed(self.addresses)},  # the first per transport
            "all_addresses": [[t, a] for t, a in self.addresses],  # a dual-stack relay lists two per transport
            "flags": sorted(self.flags),
            "exit_policy": self.exitPolicy,
            "bandwidth": self.bandwidth,
            "family": [f.hex() for f in self.family],
            "published": self.published,
            "expires": self.expires,
            "handshakes": list(self.handshakes),
        }


def _encodeBody(d):
    out = [MAGIC_HANDSHAKES if d.handshakes else MAGIC, d.nodeId, d.identityKey, _U8.pack(len(d.onionKeys))]
    for k in d.onionKeys:
        out += [k.key, _U64.pack(k.validAfter), _U64.pack(k.validUntil)]
    out.append(_U8.pack(len(d.addresses)))
    for transport, address in d.addresses:
        t, a = transport.encode("ascii"), address.encode("ascii")
        out += [_U8.pack(len(t)), t, _U8.pack(len(a)), a]
    bits = 0
    for f in d.flags:
        bits |= _FLAG_BITS[f]
    policy = encodeSummary(d.exitPolicy)
    out += [_U16.pack(bits), _U16.pack(len(policy)), policy, _U64.pack(d.bandwidth), _U8.pack(len(d.family))]
    out += list(d.family)
    if d.handshakes:
        out.append(_U8.pack(len(d.handshakes)))
        for name in d.handshakes:
            n = name.encode("ascii")
            out += [_U8.pack(len(n)), n]
    out += [_U64.pack(d.published), _U64.pack(d.expires)]
    return b"".join(out)


def _check(d):
    """Field rules shared by building and parsing."""
    if len(d.identityKey) != 32 or len(d.nodeId) != 32:
        raise DescriptorError("node id and identity key must be 32 bytes")
    if hashlib.sha256(d.identityKey).digest() != d.nodeId:
        raise DescriptorError("node id is not SHA-256 of the identity key")
    if not 1 <= len(d.onionKeys) <= MAX_ONION_KEYS:
        raise DescriptorError(f"1 to {MAX_ONION_KEYS} onion keys required")
    for k in d.onionKeys:
        if len(k.key) != 32 or not 0 <= k.validAfter < k.validUntil < 2**64:
            raise DescriptorError("onion key must be 32 bytes with valid_after < valid_until")
    if list(d.onionKeys) != sorted(d.onionKeys, key=lambda k: (k.validAfter, k.key)):
        raise DescriptorError("onion keys not in order of validity")
    if len(d.addresses) > MAX_ADDRESSES:
        raise DescriptorError(f"more than {MAX_ADDRESSES} addresses")
    if list(d.addresses) != sorted(set(d.addresses)):
        raise DescriptorError("addresses not sorted or repeated")
    for transport, address in d.addresses:
        if not isinstance(transport, str) or not _TRANSPORT.match(transport.encode("ascii", "replace")):
            raise DescriptorError(f"bad transport name {transport[:20]!r}")
        a = address.encode("ascii", "replace") if isinstance(address, str) else b"\x00"
        if not 0 < len(a) <= MAX_ADDRESS_LEN or not _PRINTABLE.match(a) or b" " in a:
            raise DescriptorError("address must be 1-128 printable ASCII characters without spaces")
    unknown = set(d.flags) - set(FLAGS)
    if unknown:
        raise DescriptorError(f"unknown flags {sorted(unknown)}")
    try:
        encodeSummary(d.exitPolicy)
    except SummaryError as e:
        raise DescriptorError(f"exit policy summary: {e}") from None
    if not 0 <= d.bandwidth < 2**64:
        raise DescriptorError("bandwidth out of range")
    if len(d.family) > MAX_FAMILY or any(len(f) != 32 for f in d.family):
        raise DescriptorError(f"family must be at most {MAX_FAMILY} node ids")
    if list(d.family) != sorted(set(d.family)) or d.nodeId in d.family:
        raise DescriptorError("family not sorted, repeated, or listing the relay itself")
    if len(d.handshakes) > MAX_HANDSHAKES or list(d.handshakes) != sorted(set(d.handshakes)):
        raise DescriptorError(f"handshakes must be at most {MAX_HANDSHAKES} names, sorted, none repeated")
    for name in d.handshakes:
        if not isinstance(name, str) or not _TRANSPORT.match(name.encode("ascii", "replace")):
            raise DescriptorError(f"bad handshake name {str(name)[:20]!r}")
    if not 0 <= d.published < d.expires < 2**64 or d.expires - d.published > MAX_LIFETIME:
        raise DescriptorError(f"need published < expires <= published + {MAX_LIFETIME}s")


def makeDescriptor(
    identity, addresses, flags, published, lifetime=3 * 3600, exitPolicy="reject 1-65535", bandwidth=0,
    family=(), onionKeys=None, handshakes=(),
):
    """
    Build and sign a descriptor for C{identity} (an L{INodeIdentity}).

    @param addresses: C{{transport: address}} or pairs.
    @param onionKeys: L{OnionKey}s; default: the identity's current onion
        key, valid from C{published} for twice the descriptor lifetime.
    @param handshakes: names of what the relay speaks beyond the classic
        handshake and relay crypto (empty: classic only, a C{MVD2} descriptor).
    @raise DescriptorError: a field breaks the rules.
    """
    published, lifetime = int(published), int(lifetime)
    if onionKeys is None:
        onionKeys = (OnionKey(identity.onionPublicKey, published, published + 2 * lifetime),)
    pairs = addresses.items() if isinstance(addresses, dict) else addresses
    d = RelayDescriptor(
        nodeId=identity.nodeId,
        identityKey=identity.identityPublicKey,
        onionKeys=tuple(sorted(onionKeys, key=lambda k: (k.validAfter, k.key))),
        addresses=tuple(sorted(set(pairs))),
        flags=frozenset(flags),
        exitPolicy=exitPolicy,
        bandwidth=int(bandwidth),
        family=tuple(sorted(set(family))),
        published=published,
        expires=published + lifetime,
        handshakes=tuple(sorted(set(handshakes))),
    )
    _check(d)
    body = _encodeBody(d)
    return attrs.evolve(d, signature=identity.sign(SIG_DOMAIN + body))


def encodeDescriptor(d):
    """@return: the canonical bytes of a signed descriptor."""
    return _encodeBody(d) + d.signature


class _Reader:
    def __init__(self, data):
        self.data = data
        self.off = 0

    def take(self, n):
        if self.off + n > len(self.data):
            raise DescriptorError("descriptor truncated")
        chunk = self.data[self.off : self.off + n]
        self.off += n
        return chunk

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return _U16.unpack(self.take(2))[0]

    def u64(self):
        return _U64.unpack(self.take(8))[0]


def parseDescriptor(data, now=None, verify=True):
    """
    Parse, check and verify a descriptor strictly.

    @param now: if given, also reject a descriptor that is expired or
        published in the future (more than 10 minutes of clock skew).
    @param verify: check the signature.  Only a caller that relies on
        nothing the descriptor says about itself may skip it (a DHT storing
        node reading the address a record is filed under: readers verify).
    @return: a L{RelayDescriptor}.
    @raise DescriptorError: malformed, non-canonical, bad signature, expired.
    """
    data = bytes(data)
    if len(data) > 4096:
        raise DescriptorError("descriptor longer than 4096 bytes")
    r = _Reader(data)
    magic = r.take(4)
    if magic not in (MAGIC, MAGIC_HANDSHAKES):
        raise DescriptorError("not a MeshVPN v2 or v3 descriptor")
    nodeId, identityKey = r.take(32), r.take(32)
    onionKeys = []
    n = r.u8()
    if n > MAX_ONION_KEYS:
        raise DescriptorError(f"more than {MAX_ONION_KEYS} onion keys")
    for _ in range(n):
        onionKeys.append(OnionKey(r.take(32), r.u64(), r.u64()))
    addresses = []
    n = r.u8()
    if n > MAX_ADDRESSES:
        raise DescriptorError(f"more than {MAX_ADDRESSES} addresses")
    for _ in range(n):
        t = r.take(r.u8())
        a = r.take(r.u8())
        if not _TRANSPORT.match(t) or not _PRINTABLE.match(a):
            raise DescriptorError("bad transport name or address characters")
        addresses.append((t.decode("ascii"), a.decode("ascii")))
    bits = r.u16()
    if bits & ~((1 << len(FLAGS)) - 1):
        raise DescriptorError("unknown flag bits")
    flags = frozenset(name for name, bit in _FLAG_BITS.items() if bits & bit)
    try:
        policy = decodeSummary(r.take(r.u16()))
    except SummaryError as e:
        raise DescriptorError(f"exit policy summary: {e}") from None
    bandwidth = r.u64()
    n = r.u8()
    if n > MAX_FAMILY:
        raise DescriptorError(f"more than {MAX_FAMILY} family members")
    family = tuple(r.take(32) for _ in range(n))
    handshakes = []
    if magic == MAGIC_HANDSHAKES:
        n = r.u8()
        if not 1 <= n <= MAX_HANDSHAKES:
            raise DescriptorError(f"a v3 descriptor lists 1 to {MAX_HANDSHAKES} handshakes")
        for _ in range(n):
            name = r.take(r.u8())
            if not _TRANSPORT.match(name):
                raise DescriptorError("bad handshake name characters")
            handshakes.append(name.decode("ascii"))
    published, expires = r.u64(), r.u64()
    signed = data[: r.off]
    signature = r.take(64)
    if r.off != len(data):
        raise DescriptorError(f"{len(data) - r.off} trailing bytes")
    d = RelayDescriptor(
        nodeId, identityKey, tuple(onionKeys), tuple(addresses), flags, policy, bandwidth, family,
        published, expires, signature, tuple(handshakes),
    )
    _check(d)
    if _encodeBody(d) != signed:
        raise DescriptorError("descriptor is not in canonical form")
    try:
        if verify:
            VerifyKey(identityKey).verify(SIG_DOMAIN + signed, signature)
    except (BadSignatureError, ValueError):
        raise DescriptorError("bad descriptor signature") from None
    if now is not None:
        if expires <= now:
            raise DescriptorError("descriptor expired")
        if published > now + 600:
            raise DescriptorError("descriptor published in the future")
    return d
