"""Key exchange, per-datagram AEAD and replay window of the datagram link.

The handshake is SIGMA-I over X25519 (the shape of Noise XX with signatures
in place of static DH, because a node's long-term key is Ed25519):

    INIT    I -> R   e_i
    RESP    R -> I   e_r, seal_kR(pub_R, sign_R(h2))
    FINISH  I -> R   seal_kI(pub_I, sign_I(h3))

C{h} is a running SHA-256 transcript of every byte sent so far, so each
signature covers both ephemerals, both session indexes, and (for the
initiator's) the responder's sealed identity: a signature cannot be replayed
into another session and neither side can be made to believe it talks to a
third party.  Identities travel encrypted (only an active attacker who
completes DH learns the initiator's, as in SIGMA-I).  Transport keys come
from HKDF over the DH secret salted with the whole transcript; each
direction has its own key and a 64-bit counter used as the nonce, never
reused: a session is replaced (rekeyed) long before it could wrap.

The hybrid variant (INIT_PQ / RESP_PQ, doc/protocol.md "Hybrid datagram
link handshake") adds an ephemeral ML-KEM-768 exchange: INIT_PQ carries
the initiator's fresh encapsulation key C{ek}, RESP_PQ the responder's
ciphertext C{ct} in its header, so both are in the transcript C{h} (and
the responder's signature covers C{ek}; the AEAD binds C{ct}).  The DH
secret is replaced by the one combiner of L{meshvpn.hybridkem.combine}:

    secret = combine("meshvpn-dlink-x25519-mlkem768-v1", DH(e_i, e_r), ss, ek, ct)

and everything else (HKDF salted with C{h}, the same labels) is unchanged.
An initiator that sent INIT_PQ accepts only RESP_PQ.
"""

import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshvpn import hybridkem
from meshvpn.identity import nodeIdFromPublicKey, verifySignature
from meshvpn.link.datagram_wire import KEY_LEN

PROTOCOL = b"meshvpn datagram link v1"
COMBINE_LABEL = b"meshvpn-dlink-x25519-mlkem768-v1"
_RESP_LABEL = b"meshvpn dlink responder signs"
_INIT_LABEL = b"meshvpn dlink initiator signs"
_ZERO_NONCE = bytes(12)
_NONCE_PREFIX = bytes(4)


class DatagramHandshakeError(Exception):
    """
    A datagram link handshake message failed authentication; the session is
    not created.  (The onion layer's ntor handshake has its own error.)
    """


def _hash(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def _hkdf(secret, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=info).derive(secret)


class Ephemeral:
    """One X25519 ephemeral key pair, used for one handshake only."""

    def __init__(self):
        self._private = X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def exchange(self, peerPublic):
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(peerPublic))
        except ValueError:
            # All-zero result: a low-order point. Never a valid peer.
            raise DatagramHandshakeError("peer ephemeral is a low-order point") from None


def _seal(key, identity, transcript, label, aad):
    blob = identity.identityPublicKey + identity.sign(label + transcript)
    return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, blob, aad)


def _open(key, sealed, transcript, label, aad):
    try:
        blob = ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, sealed, aad)
    except InvalidTag:
        raise DatagramHandshakeError("sealed identity failed authentication") from None
    peerKey, signature = blob[:KEY_LEN], blob[KEY_LEN:]
    if not verifySignature(peerKey, label + transcript, signature):
        raise DatagramHandshakeError("identity signature does not verify")
    return peerKey


class HandshakeKeys:
    """
    The cryptographic side of one handshake, for either role.  Methods are
    called in message order; each returns the bytes to send or the verified
    peer identity key.
    """

    def __init__(self, identity, postQuantum=False):
        """
        @param postQuantum: as the initiator, make an ephemeral ML-KEM-768
            key (C{ek}, sent in INIT_PQ) and accept only a RESP_PQ.
        """
        self.identity = identity
        self.ephemeral = Ephemeral()
        self._h = None
        self._shared = None
        self._kR = self._kI = None
        self._kem = hybridkem.DecapsulationKey() if postQuantum else None
        self.ek = self._kem.ek if postQuantum else None
        self._ss = self._ct = None

    @property
    def postQuantum(self):
        """Whether this handshake has (or, as the initiator, asks for) the ML-KEM part."""
        return self.ek is not None

    def _combine(self, dh):
        if self.ek is None:
            return dh
        return hybridkem.combine(COMBINE_LABEL, dh, self._ss, self.ek, self._ct)

    # initiator
    def initMessage(self, initBytes):
        self._h = _hash(PROTOCOL, initBytes)

    def readResp(self, respHeader, sealed, peerEphemeral, expectedNodeId, ct=None):
        if (ct is None) != (self._kem is None):
            raise DatagramHandshakeError("RESP does not match the INIT sent: a classic answer to the post-quantum "
                                         "handshake is a downgrade, refused" if ct is None else
                                         "RESP_PQ to a classic INIT")
        if ct is not None:
            self._ss, self._ct = self._kem.decapsulate(ct), ct
        self._shared = self._combine(self.ephemeral.exchange(peerEphemeral))
        self._h = _hash(self._h, respHeader)
        keys = _hkdf(self._shared, self._h, b"handshake")
        self._kR, self._kI = keys[:32], keys[32:]
        peerKey = _open(self._kR, sealed, self._h, _RESP_LABEL, respHeader)
        if expectedNodeId is not None and nodeIdFromPublicKey(peerKey) != expectedNodeId:
            raise DatagramHandshakeError("responder is not the expected node")
        self._h = _hash(self._h, sealed)
        return peerKey

    def finishMessage(self, finishHeader):
        sealed = _seal(self._kI, self.identity, self._h, _INIT_LABEL, finishHeader)
        self._h = _hash(self._h, sealed)
        return finishHeader + sealed

    # responder
    def encapsulate(self, peerEk):
        """
        The responder's ML-KEM part, before it builds RESP_PQ's header.

        @return: the ciphertext for that header.
        @raise DatagramHandshakeError: C{peerEk} is not a valid encapsulation key.
        """
        try:
            self._ss, self._ct = hybridkem.encapsulate(peerEk)
        except hybridkem.KEMError as e:
            raise DatagramHandshakeError(str(e)) from None
        self.ek = bytes(peerEk)
        return self._ct

    def respMessage(self, initBytes, peerEphemeral, respHeader):
        self._shared = self._combine(self.ephemeral.exchange(peerEphemeral))
        self._h = _hash(_hash(PROTOCOL, initBytes), respHeader)
        keys = _hkdf(self._shared, self._h, b"handshake")
        self._kR, self._kI = keys[:32], keys[32:]
        sealed = _seal(self._kR, self.identity, self._h, _RESP_LABEL, respHeader)
        self._h = _hash(self._h, sealed)
        return respHeader + sealed

    def readFinish(self, finishHeader, sealed):
        peerKey = _open(self._kI, sealed, self._h, _INIT_LABEL, finishHeader)
        self._h = _hash(self._h, sealed)
        return peerKey

    def transportKeys(self):
        """@return: C{(initiatorToResponder, responderToInitiator)} keys; forgets the DH secret."""
        keys = _hkdf(self._shared, self._h, b"transport")
        self._shared = self._kem = self._ss = None  # forward secrecy: nothing of the exchange outlives it
        return keys[:32], keys[32:]


class ReplayWindow:
    """
    Sliding window over 64-bit counters (RFC 6479 idea, one Python int as the
    bitmap): bit i set means counter C{top - i} was seen.  L{check} is cheap
    and done before decrypting; L{mark} only after the tag verified, so a
    forged counter can never move the window.
    """

    __slots__ = ("size", "top", "bits", "_mask")

    def __init__(self, size=2048):
        self.size = size
        self.top = -1
        self.bits = 0
        self._mask = (1 << size) - 1

    def check(self, counter):
        """@return: C{True} if C{counter} is new and inside the window."""
        if counter > self.top:
            return True
        offset = self.top - counter
        return offset < self.size and not (self.bits >> offset) & 1

    def mark(self, counter):
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & self._mask if shift < self.size else 1
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)


class Session:
    """
    The transport keys of one completed handshake: seals outgoing DATA with
    a fresh counter, opens incoming DATA after the replay check.
    """

    def __init__(self, localIndex, remoteIndex, sendKey, recvKey, created, initiator, windowSize):
        self.localIndex = localIndex
        self.remoteIndex = remoteIndex
        self._send = ChaCha20Poly1305(sendKey)
        self._recv = ChaCha20Poly1305(recvKey)
        self.sendCounter = 0
        self.created = created
        self.initiator = initiator
        self.window = ReplayWindow(windowSize)
        self.confirmed = not initiator  # the responder knows the initiator has the keys
        self.received = 0
        self.postQuantum = False  # set by the endpoint: keys from the hybrid handshake

    def seal(self, header, plaintext):
        counter = self.sendCounter
        self.sendCounter = counter + 1
        return self._send.encrypt(_NONCE_PREFIX + counter.to_bytes(8, "big"), plaintext, header)

    def open(self, counter, header, sealed):
        """
        @return: the plaintext, or C{None} if it is a replay (the caller counts
            it); raises L{InvalidTag} for a forgery.
        """
        if not self.window.check(counter):
            return None
        plaintext = self._recv.decrypt(_NONCE_PREFIX + counter.to_bytes(8, "big"), sealed, header)
        self.window.mark(counter)
        self.received += 1
        return plaintext
