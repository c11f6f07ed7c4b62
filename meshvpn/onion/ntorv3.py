"""The ntor v3 handshake (Tor proposal 332): ntor with encrypted, authenticated
messages in both directions and a verified transcript.

MeshVPN uses it for two reasons ntor (v1) cannot serve: the client's message
carries what the circuit is to use (an ML-KEM-768 encapsulation key, the
relay-crypto scheme it asks for) and the relay's message carries its answer
(the ML-KEM ciphertext, the scheme it chose), and both are covered by the
handshake's MAC and AUTH, so nobody between the two can change either
unnoticed.  The construction and the SHA3/SHAKE instantiation are those of
the proposal (Appendix A.1), so Tor's published vectors check this code
with Tor's PROTOID (meshvpn/onion/test/test_ntorv3.py); the PROTOIDs MeshVPN
puts on the wire are its own (L{meshvpn.onion.hybrid}), because what the
messages hold differs from Tor's.

  client:  Bx = EXP(B,x)
           phase1 = KDF_msgkdf(Bx | ID | X | B | PROTOID | ENCAP(VER))
           MSG = ENC(ENC_K1, CM);  MAC = MAC_msgmac(MAC_K1, ID | B | X | MSG)
           sends  ID | B | X | MSG | MAC
  relay:   secret_input = Xy | Xb | ID | B | X | Y | PROTOID | ENCAP(VER)
           key_seed = H_key_seed(secret_input);  verify = H_verify(secret_input)
           ENC_KEY | KEYSTREAM = KDF_final(key_seed)
           SMSG = ENC(ENC_KEY, SM)
           AUTH = H_auth(verify | ID | B | Y | X | MAC | ENCAP(SMSG) | PROTOID | "Server")
           sends  Y | AUTH | SMSG

ENCAP(s) is the 8-byte big-endian length of s, then s.  Every X25519 output
is checked against the all-zero value (a small-order point), as in ntor.
"""

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from nacl.utils import random as randomBytes

from meshvpn.onion.ntor import HandshakeError, _exp, publicKey

ID_LEN = 32
PUB_LEN = 32
MAC_LEN = 32
ENC_KEY_LEN = 32
CLIENT_OVERHEAD = ID_LEN + 2 * PUB_LEN + MAC_LEN  # 128 bytes besides the client's message
SERVER_OVERHEAD = PUB_LEN + MAC_LEN                 # 64 bytes besides the relay's message

TOR_PROTOID = b"ntor3-curve25519-sha3_256-1"


def encap(s):
    return struct.pack(">Q", len(s)) + s


def _hash(s, tweak):
    return hashlib.sha3_256(encap(tweak) + s).digest()


def _mac(key, msg, tweak):
    return hashlib.sha3_256(encap(tweak) + encap(key) + msg).digest()


def kdf(s, tweak, length):
    """KDF(s, t) = SHAKE-256(ENCAP(t) | s), the first C{length} bytes."""
    return hashlib.shake_256(encap(tweak) + s).digest(length)


def _aesCtr(key, data):
    # A fresh key for every message, so the zero IV is safe (as in Tor).
    return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(data)


class Tweaks:
    """The tweak strings of one PROTOID (proposal 332, Appendix A.1)."""

    __slots__ = ("protoid", "msgkdf", "msgmac", "keySeed", "verify", "final", "auth")

    def __init__(self, protoid):
        self.protoid = protoid
        self.msgkdf = protoid + b":kdf_phase1"
        self.msgmac = protoid + b":msg_mac"
        self.keySeed = protoid + b":key_seed"
        self.verify = protoid + b":verify"
        self.final = protoid + b":kdf_final"
        self.auth = protoid + b":auth_final"


class ClientState:
    """What the client keeps between its message and the relay's reply."""

    __slots__ = ("tweaks", "nodeId", "B", "x", "X", "Bx", "mac", "ver")

    def __init__(self, tweaks, nodeId, B, x, X, Bx, mac, ver):
        self.tweaks, self.nodeId, self.B, self.x, self.X = tweaks, nodeId, B, x, X
        self.Bx, self.mac, self.ver = Bx, mac, ver


def _phase1(t, secret, nodeId, X, B, ver):
    keys = kdf(secret + nodeId + X + B + t.protoid + encap(ver), t.msgkdf, ENC_KEY_LEN + MAC_LEN)
    return keys[:ENC_KEY_LEN], keys[ENC_KEY_LEN:]


def _final(t, xy, xb, nodeId, B, X, Y, ver):
    secretInput = xy + xb + nodeId + B + X + Y + t.protoid + encap(ver)
    return _hash(secretInput, t.keySeed), _hash(secretInput, t.verify)


def _auth(t, verify, nodeId, B, Y, X, mac, smsg):
    return _hash(verify + nodeId + B + Y + X + mac + encap(smsg) + t.protoid + b"Server", t.auth)


def clientCreate(tweaks, nodeId, B, message, ver=b"", x=None):
    """
    Phase 1: the client's handshake carrying C{message} (CM) to the relay
    C{nodeId} whose onion key is C{B}.

    @param x: the ephemeral secret (vector tests pass one); random otherwise.
    @return: C{(state, onionskin)}.
    """
    if len(nodeId) != ID_LEN or len(B) != PUB_LEN:
        raise ValueError("ntor v3 needs a 32-byte node id and a 32-byte onion key")
    x = randomBytes(32) if x is None else x
    X = publicKey(x)
    Bx = _exp(x, B)
    encKey, macKey = _phase1(tweaks, Bx, nodeId, X, B, ver)
    msg = _aesCtr(encKey, message)
    mac = _mac(macKey, nodeId + B + X + msg, tweaks.msgmac)
    return ClientState(tweaks, nodeId, B, x, X, Bx, mac, ver), nodeId + B + X + msg + mac


class ServerState:
    """What the relay keeps between reading the client's message and answering it."""

    __slots__ = ("tweaks", "nodeId", "B", "X", "Xb", "mac", "ver")

    def __init__(self, tweaks, nodeId, B, X, Xb, mac, ver):
        self.tweaks, self.nodeId, self.B, self.X, self.Xb, self.mac, self.ver = tweaks, nodeId, B, X, Xb, mac, ver


def serverReceive(tweaks, onionskin, nodeId, findKey, ver=b""):
    """
    Check the client's handshake and decrypt its message.

    @param findKey: C{callable(B) -> secret or None}, the onion key ring's lookup.
    @return: C{(state, message)}.
    @raise HandshakeError: too short, another relay's, unknown key, bad point or bad MAC.
    """
    onionskin = bytes(onionskin)
    if len(onionskin) < CLIENT_OVERHEAD:
        raise HandshakeError(f"ntor v3 onionskin is {len(onionskin)} bytes, at least {CLIENT_OVERHEAD} expected")
    theirId = onionskin[:ID_LEN]
    B = onionskin[ID_LEN:ID_LEN + PUB_LEN]
    X = onionskin[ID_LEN + PUB_LEN:ID_LEN + 2 * PUB_LEN]
    msg, mac = onionskin[ID_LEN + 2 * PUB_LEN:-MAC_LEN], onionskin[-MAC_LEN:]
    if not hmac.compare_digest(theirId, nodeId):
        raise HandshakeError("ntor v3 onionskin is for another relay")
    b = findKey(B)
    if b is None:
        raise HandshakeError("ntor v3 onionskin names an onion key this relay does not hold (rotated out?)")
    Xb = _exp(b, X)
    encKey, macKey = _phase1(tweaks, Xb, nodeId, X, B, ver)
    if not hmac.compare_digest(_mac(macKey, nodeId + B + X + msg, tweaks.msgmac), mac):
        raise HandshakeError("ntor v3 client MAC mismatch")
    return ServerState(tweaks, nodeId, B, X, Xb, mac, ver), _aesCtr(encKey, msg)


def serverRespond(state, message, keyLength, y=None):
    """
    Answer with C{message} (SM).

    @return: C{(keySeed, keystream, reply)}: the KDF_final seed (which a
        combiner may take further), C{keyLength} bytes of KEYSTREAM, and
        C{Y | AUTH | SMSG}.
    """
    t = state.tweaks
    y = randomBytes(32) if y is None else y
    Y = publicKey(y)
    xy = _exp(y, state.X)
    keySeed, verify = _final(t, xy, state.Xb, state.nodeId, state.B, state.X, Y, state.ver)
    raw = kdf(keySeed, t.final, ENC_KEY_LEN + keyLength)
    smsg = _aesCtr(raw[:ENC_KEY_LEN], message)
    auth = _auth(t, verify, state.nodeId, state.B, Y, state.X, state.mac, smsg)
    return keySeed, raw[ENC_KEY_LEN:], Y + auth + smsg


def clientFinish(state, reply, keyLength):
    """
    Phase 2: check the relay's C{Y | AUTH | SMSG}.

    @return: C{(keySeed, keystream, message)}.
    @raise HandshakeError: too short, bad point, or AUTH mismatch (the
        relay does not hold the onion key, or someone changed a byte).
    """
    reply = bytes(reply)
    if len(reply) < SERVER_OVERHEAD:
        raise HandshakeError(f"ntor v3 reply is {len(reply)} bytes, at least {SERVER_OVERHEAD} expected")
    t = state.tweaks
    Y, auth, smsg = reply[:PUB_LEN], reply[PUB_LEN:SERVER_OVERHEAD], reply[SERVER_OVERHEAD:]
    xy = _exp(state.x, Y)
    keySeed, verify = _final(t, xy, state.Bx, state.nodeId, state.B, state.X, Y, state.ver)
    if not hmac.compare_digest(_auth(t, verify, state.nodeId, state.B, Y, state.X, state.mac, smsg), auth):
        raise HandshakeError("ntor v3 AUTH mismatch: the relay does not hold the onion key, or the reply was changed")
    raw = kdf(keySeed, t.final, ENC_KEY_LEN + keyLength)
    return keySeed, raw[ENC_KEY_LEN:], _aesCtr(raw[:ENC_KEY_LEN], smsg)
