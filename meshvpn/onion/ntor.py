"""The ntor handshake (tor-spec "The ntor handshake", ntor-curve25519-sha256-1).

The math and every constant are Tor's, so Tor's reference values check this
code byte for byte (meshvpn/onion/test/test_ntor.py).  The one parameter Tor
fixes that we do not is the length of ID: Tor uses its 20-byte RSA identity
digest, MeshVPN uses the 32-byte node id (SHA-256 of the Ed25519 identity
key).  The functions take ID as bytes of any length.

  client -> relay:  ID | B | X                      (CREATE2 / EXTEND2 body)
  relay  -> client: Y | AUTH                        (CREATED2 / EXTENDED2 body)
  secret_input = EXP(X,y) | EXP(X,b) | ID | B | X | Y | PROTOID
  KEY_SEED = H(secret_input, t_key);  verify = H(secret_input, t_verify)
  auth_input = verify | ID | B | Y | X | PROTOID | "Server"
  AUTH = H(auth_input, t_mac)
  keys = KDF-RFC5869(KEY_SEED) = HKDF-SHA256 expand with info m_expand
"""

import hashlib
import hmac

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import RuntimeError as NaclRuntimeError
from nacl.utils import random as randomBytes

from meshvpn.errors import MeshVPNError

PROTOID = b"ntor-curve25519-sha256-1"
T_MAC = PROTOID + b":mac"
T_KEY = PROTOID + b":key_extract"
T_VERIFY = PROTOID + b":verify"
M_EXPAND = PROTOID + b":key_expand"
SERVER = b"Server"

KEY_LEN = 32


class HandshakeError(MeshVPNError):
    """An ntor handshake failed: unknown onion key, bad point, or AUTH mismatch."""


def _h(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def kdfRfc5869(keySeed, length):
    """
    KDF-RFC5869 as tor-spec defines it: HKDF-SHA256 expand of PRK=KEY_SEED
    with info m_expand (the extract step is KEY_SEED's own HMAC with t_key).
    """
    if length > 255 * 32:
        raise ValueError("KDF-RFC5869 output limited to 8160 bytes")
    out, block, i = [], b"", 1
    while 32 * (i - 1) < length:
        block = _h(keySeed, block + M_EXPAND + bytes([i]))
        out.append(block)
        i += 1
    return b"".join(out)[:length]


def _exp(secret, public):
    """X25519; an all-zero result (a small-order point) fails the handshake, as in Tor."""
    try:
        shared = crypto_scalarmult(secret, public)
    except NaclRuntimeError:
        raise HandshakeError("peer sent a non-contributory curve25519 point") from None
    if shared == bytes(32):
        raise HandshakeError("peer sent a non-contributory curve25519 point")
    return shared


def publicKey(secret):
    """The X25519 public key of a 32-byte secret."""
    return crypto_scalarmult_base(secret)


def _derive(xy, xb, nodeId, B, X, Y):
    secretInput = xy + xb + nodeId + B + X + Y + PROTOID
    keySeed = _h(T_KEY, secretInput)
    verify = _h(T_VERIFY, secretInput)
    auth = _h(T_MAC, verify + nodeId + B + Y + X + PROTOID + SERVER)
    return keySeed, auth


class NtorClientState:
    """What the client keeps between sending ID|B|X and reading Y|AUTH."""

    __slots__ = ("nodeId", "B", "x", "X")

    def __init__(self, nodeId, B, x, X):
        self.nodeId, self.B, self.x, self.X = nodeId, B, x, X


def clientCreate(nodeId, B, x=None):
    """
    Start a handshake with the relay whose node id is C{nodeId} and whose
    onion key is C{B}.

    @param x: the ephemeral secret (tests pass Tor's); random otherwise.
    @return: C{(state, onionskin)}; C{onionskin} is ID | B | X.
    """
    x = randomBytes(32) if x is None else x
    X = publicKey(x)
    return NtorClientState(nodeId, B, x, X), nodeId + B + X


def clientFinish(state, reply):
    """
    Check the relay's Y | AUTH.

    @return: KEY_SEED (feed it to L{kdfRfc5869}).
    @raise HandshakeError: AUTH does not match or Y is a bad point.
    """
    if len(reply) != 64:
        raise HandshakeError(f"ntor reply is {len(reply)} bytes, expected 64")
    Y, auth = reply[:32], reply[32:]
    xy = _exp(state.x, Y)
    xb = _exp(state.x, state.B)
    keySeed, expected = _derive(xy, xb, state.nodeId, state.B, state.X, Y)
    if not hmac.compare_digest(auth, expected):
        raise HandshakeError("ntor AUTH mismatch: the relay does not hold the onion key")
    return keySeed


def serverRespond(onionskin, nodeId, findKey, y=None):
    """
    Answer a client's ID | B | X.

    @param nodeId: this relay's node id; the onionskin must name it.
    @param findKey: C{callable(B) -> bytes or None}: the onion secret whose
        public key is C{B}, if it is one this relay accepts now (current, next,
        or previous within its overlap window).
    @param y: the ephemeral secret (tests pass Tor's); random otherwise.
    @return: C{(KEY_SEED, reply)}; C{reply} is Y | AUTH.
    @raise HandshakeError: wrong node id, unknown key, or a bad point.
    """
    idLen = len(nodeId)
    if len(onionskin) != idLen + 64:
        raise HandshakeError(f"ntor onionskin is {len(onionskin)} bytes, expected {idLen + 64}")
    theirId, B, X = onionskin[:idLen], onionskin[idLen:idLen + 32], onionskin[idLen + 32:]
    if not hmac.compare_digest(theirId, nodeId):
        raise HandshakeError("ntor onionskin is for another relay")
    b = findKey(bytes(B))
    if b is None:
        raise HandshakeError("ntor onionskin names an onion key this relay does not hold (rotated out?)")
    y = randomBytes(32) if y is None else y
    Y = publicKey(y)
    xy = _exp(y, X)
    xb = _exp(b, X)
    keySeed, auth = _derive(xy, xb, nodeId, bytes(B), bytes(X), Y)
    return keySeed, Y + auth
