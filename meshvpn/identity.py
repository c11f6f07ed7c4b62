"""A node's long-term keys and the node id derived from them.

The node id is SHA-256 of the Ed25519 identity public key, so nobody can
choose where they sit in the DHT keyspace (a Sybil limit, see doc/security.md).
Key files are small text files: a header naming the key type and format
version, the secret as base64, and the public key as base64.  The public key
line lets a load detect corruption: the secret must derive to it.
"""

import base64
import binascii
import hashlib
import os

from nacl.public import PrivateKey
from twisted.logger import Logger
from nacl.signing import SigningKey, VerifyKey
from zope.interface import implementer

from meshvpn.errors import KeyFileError
from meshvpn.interfaces import INodeIdentity
from meshvpn.secretfile import ensurePrivateDirectory, readSecretFile, writeSecretFile

IDENTITY_FILE = "identity.key"
ONION_FILE = "onion.key"
_IDENTITY_HEADER = "meshvpn-ed25519-identity v1"
_ONION_HEADER = "meshvpn-x25519-onion v1"

log = Logger()


def nodeIdFromPublicKey(identityPublicKey):
    """The 32-byte node id of an Ed25519 public key."""
    return hashlib.sha256(identityPublicKey).digest()


def _encodeKeyFile(header, secret, public):
    return (
        f"{header}\n"
        f"secret: {base64.b64encode(secret).decode()}\n"
        f"public: {base64.b64encode(public).decode()}\n"
    ).encode()


def _decodeKeyFile(path, raw, header, derivePublic):
    """
    Parse a key file and check its secret derives to its public key.

    @return: the 32-byte secret.
    @raise KeyFileError: naming C{path}, if anything is off.
    """

    def corrupt(why):
        return KeyFileError(f"{path}: corrupt key file ({why}); not overwriting it")

    try:
        lines = raw.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise corrupt("not ASCII text") from None
    if len(lines) != 3 or lines[0] != header:
        raise corrupt(f"expected 3 lines starting with {header!r}")
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(": ")
        if not sep or name not in ("secret", "public"):
            raise corrupt(f"unexpected line {name[:20]!r}")
        try:
            fields[name] = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise corrupt(f"{name} is not base64") from None
    secret, public = fields.get("secret", b""), fields.get("public", b"")
    if len(secret) != 32 or len(public) != 32:
        raise corrupt("keys must be 32 bytes")
    if derivePublic(secret) != public:
        raise corrupt("secret does not match public key")
    return secret


def _edPublic(seed):
    return bytes(SigningKey(seed).verify_key)


def _xPublic(secret):
    return bytes(PrivateKey(secret).public_key)


@implementer(INodeIdentity)
class NodeIdentity:
    """
    The loaded keys of one node.  Construct with L{loadOrCreate} or
    L{generate}; the private halves never leave this object except into
    their key files.
    """

    def __init__(self, signingKey, onionKey):
        self._signingKey = signingKey
        self._onionKey = onionKey
        self.identityPublicKey = bytes(signingKey.verify_key)
        self.onionPublicKey = bytes(onionKey.public_key)
        self.nodeId = nodeIdFromPublicKey(self.identityPublicKey)

    @classmethod
    def generate(cls):
        """Fresh keys, in memory only (tests and simulations)."""
        return cls(SigningKey.generate(), PrivateKey.generate())

    @classmethod
    def loadOrCreate(cls, dataDir):
        """
        Load the keys from C{dataDir}, creating any that do not exist yet.

        An existing file that is corrupt or too permissive is never
        overwritten: the node stops with a L{KeyFileError} naming it.  An
        existing C{dataDir} that others may enter is tightened to 0700.
        """
        loose = ensurePrivateDirectory(dataDir)
        if loose is not None:
            log.warn("data directory {path} had mode {mode:04o}; tightened to 0700", path=dataDir, mode=loose)
        idPath = os.path.join(dataDir, IDENTITY_FILE)
        onionPath = os.path.join(dataDir, ONION_FILE)
        signingKey = SigningKey(
            _loadOrCreateSecret(idPath, _IDENTITY_HEADER, _edPublic, lambda: bytes(SigningKey.generate()))
        )
        onionKey = PrivateKey(
            _loadOrCreateSecret(onionPath, _ONION_HEADER, _xPublic, lambda: bytes(PrivateKey.generate()))
        )
        return cls(signingKey, onionKey)

    @property
    def nodeIdHex(self):
        return self.nodeId.hex()

    def sign(self, message):
        return self._signingKey.sign(message).signature

    def onionPrivateKey(self):
        return self._onionKey

    def __repr__(self):
        return f"<NodeIdentity {self.nodeIdHex[:16]}>"


def _loadOrCreateSecret(path, header, derivePublic, generate):
    if os.path.lexists(path):
        return _decodeKeyFile(path, readSecretFile(path), header, derivePublic)
    secret = generate()
    writeSecretFile(path, _encodeKeyFile(header, secret, derivePublic(secret)))
    return secret


def verifySignature(identityPublicKey, message, signature):
    """
    @return: C{True} if C{signature} is a valid Ed25519 signature of
        C{message} by C{identityPublicKey}; never raises on bad input.
    """
    try:
        VerifyKey(identityPublicKey).verify(message, signature)
    except Exception:
        return False
    return True
