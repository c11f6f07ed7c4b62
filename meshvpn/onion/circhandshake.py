"""The circuit handshakes a client and a relay can agree on, and what they carry.

Three CREATE2 handshake types, named as relays list them in their
descriptors (L{meshvpn.dht.descriptor.RelayDescriptor.handshakes}):

  "ntor"            HTYPE 0x0002  ntor v1 (L{meshvpn.onion.ntor}); classic; what
                                  a relay whose descriptor names none speaks
  "ntor3"           HTYPE 0x0003  ntor v3 (L{meshvpn.onion.ntorv3}) with extensions
  "ntor3-mlkem768"  HTYPE 0x0103  ntor v3 + ephemeral ML-KEM-768, keys through the
                                  hybrid combiner (L{meshvpn.hybridkem.combine})

The hybrid handshake (doc/protocol.md, "Hybrid circuit handshake"):

  CM = ek (1184) | extensions        SM = ct (1088) | extensions
  ntor v3 with PROTOID "meshvpn-ntor3-x25519-mlkem768-sha3_256-1" and
  VER "meshvpn circuit extend", so CM and SM are encrypted and covered by
  the client's MAC and the relay's AUTH: nobody between the two can swap
  ek or ct, or strip either, without the handshake failing.
  seed = combine("meshvpn-circuit-x25519-mlkem768-v1", ntor3 key_seed, ss, ek, ct)
  hop keys = SHAKE-256(ENCAP("meshvpn-circuit-keys-v1") | seed), KEY_MATERIAL_LEN bytes

The client makes a fresh ML-KEM key pair per handshake and forgets it
once the reply is read; the relay's X25519 ephemeral is fresh too: both
parts are forward secret.  Authentication stays X25519's (the relay's onion
key): a quantum adversary who is active at build time can impersonate a
relay, but one who only records the handshake cannot recover its keys.

Extensions follow proposal 332's meta-encoding (type u8, length u8, body);
unknown types are ignored, a repeated type counts once.  MeshVPN's:

  0x10  relay crypto requested: scheme ids, most preferred first (client)
  0x11  relay crypto chosen: one scheme id (relay)

A client that asked for the hybrid handshake accepts only a hybrid reply:
a relay that advertises it but answers any other way is refused (the
downgrade test, meshvpn/onion/test/test_circhandshake.py).
"""

import struct

from meshvpn import hybridkem
from meshvpn.onion import ntor, ntorv3
from meshvpn.onion.ntor import HandshakeError

NTOR, NTOR3, HYBRID = "ntor", "ntor3", "ntor3-mlkem768"
HTYPES = {NTOR: 0x0002, NTOR3: 0x0003, HYBRID: 0x0103}
KINDS = {v: k for k, v in HTYPES.items()}
POST_QUANTUM = frozenset((HYBRID,))
# What a descriptor without a handshakes field means.
CLASSIC_ONLY = (NTOR,)

TWEAKS = {
    NTOR3: ntorv3.Tweaks(b"meshvpn-ntor3-x25519-sha3_256-1"),
    HYBRID: ntorv3.Tweaks(b"meshvpn-ntor3-x25519-mlkem768-sha3_256-1"),
}
VERIFICATION = b"meshvpn circuit extend"
COMBINE_LABEL = b"meshvpn-circuit-x25519-mlkem768-v1"
KEYS_LABEL = b"meshvpn-circuit-keys-v1"

# Hop key material for every relay crypto scheme (the largest one's need).
KEY_MATERIAL_LEN = 192

EXT_CRYPTO_REQUEST = 0x10
EXT_CRYPTO_CHOSEN = 0x11

# Relay crypto schemes (L{meshvpn.onion.relaycrypto}, L{meshvpn.onion.cgo}); ids as they travel.
TOR1, CGO = "tor1", "cgo"
SCHEME_IDS = {TOR1: 1, CGO: 2}
# What a relay offers unless told otherwise, most preferred first.
RELAY_SCHEMES = (CGO, TOR1)
SCHEMES = {v: k for k, v in SCHEME_IDS.items()}

# Largest handshake bodies (bounds for the fragment reassembly, L{meshvpn.onion.fragments}).
MAX_ONIONSKIN = 2048
MAX_REPLY = 2048


def encodeExtensions(exts):
    """C{[(type, body)]} -> bytes (each body at most 255 bytes)."""
    out = []
    for t, body in exts:
        if not 0 <= t <= 255 or len(body) > 255:
            raise ValueError("extension type or body out of range")
        out.append(struct.pack(">BB", t, len(body)) + body)
    return b"".join(out)


def decodeExtensions(data):
    """
    @return: C{{type: body}}, the first occurrence of each type.
    @raise HandshakeError: a truncated extension.
    """
    exts, i, data = {}, 0, bytes(data)
    while i < len(data):
        if i + 2 > len(data):
            raise HandshakeError("ntor v3 extension header truncated")
        t, n = data[i], data[i + 1]
        if i + 2 + n > len(data):
            raise HandshakeError("ntor v3 extension body truncated")
        exts.setdefault(t, data[i + 2:i + 2 + n])
        i += 2 + n
    return exts


class HopKeys:
    """
    What a finished handshake gives a hop: its key material, the relay
    crypto scheme agreed, and which handshake made it (for status).
    """

    __slots__ = ("material", "scheme", "kind")

    def __init__(self, material, scheme, kind):
        self.material, self.scheme, self.kind = material, scheme, kind

    @property
    def postQuantum(self):
        return self.kind in POST_QUANTUM


def chooseKind(advertised):
    """
    The handshake a client uses with a relay advertising C{advertised}
    (C{None} or empty: classic only): the hybrid one whenever the relay
    lists it and ML-KEM works here, else ntor v3, else ntor.
    """
    advertised = advertised or CLASSIC_ONLY
    if HYBRID in advertised and hybridkem.available():
        return HYBRID
    if NTOR3 in advertised:
        return NTOR3
    return NTOR


def chooseSchemes(kind, advertised):
    """
    The relay crypto a client asks a relay for: CGO alone when the relay's
    descriptor lists it (so a relay that advertises CGO and answers without
    it is refused: the downgrade check of L{ClientHandshake.finish}), else
    the original scheme.  ntor (v1) carries no extensions: original only.
    """
    if kind != NTOR and CGO in (advertised or ()):
        return (CGO,)
    return (TOR1,)


def supportedKinds():
    """The handshakes this node answers (what its descriptor lists)."""
    return (NTOR, NTOR3, HYBRID) if hybridkem.available() else (NTOR, NTOR3)


class ClientHandshake:
    """
    One handshake a client started: L{start}, send C{(htype, hdata)}, then
    L{finish} with the relay's reply.
    """

    def __init__(self, kind, nodeId, B, schemes=(TOR1,), x=None, kemSeed=None):
        """
        @param schemes: the relay crypto schemes the client accepts, most preferred first.
        @param x: the X25519 ephemeral secret and C{kemSeed} the ML-KEM key
            generation seed (64 bytes): the vector tests pass them; random otherwise.
        """
        self.kind = kind
        self.htype = HTYPES[kind]
        self.schemes = tuple(schemes)
        self._kem = None
        if kind == NTOR:
            self._state, self.hdata = ntor.clientCreate(nodeId, B, x)
            return
        exts = encodeExtensions([(EXT_CRYPTO_REQUEST, bytes(SCHEME_IDS[s] for s in self.schemes))])
        message = exts
        if kind == HYBRID:
            self._kem = hybridkem.DecapsulationKey(kemSeed)
            message = self._kem.ek + exts
        self._state, self.hdata = ntorv3.clientCreate(TWEAKS[kind], nodeId, B, message, VERIFICATION, x)

    def finish(self, reply):
        """
        @return: the hop's L{HopKeys}.
        @raise HandshakeError: the reply fails authentication, is not the
            kind asked for (a downgrade), or picks a scheme not offered.
        """
        if self.kind == NTOR:
            return HopKeys(ntor.kdfRfc5869(ntor.clientFinish(self._state, reply), 96), TOR1, NTOR)
        keySeed, keystream, sm = ntorv3.clientFinish(self._state, reply, KEY_MATERIAL_LEN)
        if self.kind == HYBRID:
            kem, self._kem = self._kem, None  # forgotten once used: forward secrecy
            if len(sm) < hybridkem.CT_LEN:
                raise HandshakeError("relay answered the hybrid handshake without an ML-KEM ciphertext: "
                                     "downgrade refused")
            ct, sm = sm[:hybridkem.CT_LEN], sm[hybridkem.CT_LEN:]
            ss = kem.decapsulate(ct)
            seed = hybridkem.combine(COMBINE_LABEL, keySeed, ss, kem.ek, ct)
            keystream = hybridkem.expand(seed, KEYS_LABEL, KEY_MATERIAL_LEN)
        chosen = decodeExtensions(sm).get(EXT_CRYPTO_CHOSEN)
        scheme = TOR1 if chosen is None or len(chosen) != 1 else SCHEMES.get(chosen[0])
        if scheme not in self.schemes:
            raise HandshakeError(f"relay chose relay crypto {scheme or 'unknown'}, which the client did not offer: "
                                 "downgrade refused")
        return HopKeys(keystream, scheme, self.kind)


def serverAnswer(htype, hdata, nodeId, findKey, schemes=(TOR1,), y=None, encapsulate=None):
    """
    Answer a CREATE2 body as a relay supporting the relay crypto C{schemes}.

    @param y: the X25519 ephemeral and C{encapsulate} a stand-in for
        L{hybridkem.encapsulate}: the vector tests pass them.

    @return: C{(HopKeys, reply)}.
    @raise HandshakeError: unknown handshake type, or the handshake fails.
    """
    kind = KINDS.get(htype)
    if kind is None or (kind == HYBRID and not hybridkem.available()):
        raise HandshakeError(f"CREATE2 handshake type {htype:#06x} not supported")
    if kind == NTOR:
        keySeed, reply = ntor.serverRespond(hdata, nodeId, findKey, y)
        return HopKeys(ntor.kdfRfc5869(keySeed, 96), TOR1, NTOR), reply
    state, cm = ntorv3.serverReceive(TWEAKS[kind], hdata, nodeId, findKey, VERIFICATION)
    prefix = b""
    if kind == HYBRID:
        if len(cm) < hybridkem.EK_LEN:
            raise HandshakeError("hybrid handshake without an ML-KEM encapsulation key")
        ek, cm = cm[:hybridkem.EK_LEN], cm[hybridkem.EK_LEN:]
        try:
            ss, ct = (encapsulate or hybridkem.encapsulate)(ek)
        except hybridkem.KEMError as e:
            raise HandshakeError(str(e)) from None
        prefix = ct
    requested = decodeExtensions(cm).get(EXT_CRYPTO_REQUEST, b"")
    scheme = next((SCHEMES[i] for i in requested if SCHEMES.get(i) in schemes), TOR1)
    sm = prefix + encodeExtensions([(EXT_CRYPTO_CHOSEN, bytes([SCHEME_IDS[scheme]]))])
    keySeed, keystream, reply = ntorv3.serverRespond(state, sm, KEY_MATERIAL_LEN, y)
    if kind == HYBRID:
        seed = hybridkem.combine(COMBINE_LABEL, keySeed, ss, ek, ct)
        keystream = hybridkem.expand(seed, KEYS_LABEL, KEY_MATERIAL_LEN)
    return HopKeys(keystream, scheme, kind), reply
