"""The issuer's signing keys: one 2048-bit RSA key per epoch, kept until its tokens expire.

Why per epoch: see L{meshvpn.payments.epochs}.  A key is made when its
epoch is about to be needed (the current one and the next, so the next is
published before anyone needs it), stored 0600 and atomically as PKCS#8
PEM in C{DATA_DIR/issuer-keys/}, and deleted once its epoch's tokens have
expired.  A restart loads the same keys, so tokens sold before it stay
valid.  Two live keys never share a truncated key id (the last byte of the
token_key_id, the only part of it a TokenRequest carries, RFC 9578 6.5):
a colliding new key is generated again.
"""

import os
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from meshvpn.payments import tokens
from meshvpn.payments.blindrsa import BlindSigner
from meshvpn.secretfile import ensurePrivateDirectory, readSecretFile, writeSecretFile

KEYS_DIR = "issuer-keys"
_NAME = re.compile(r"\Aepoch-(\d{1,12})\.pem\Z")


class EpochKey:
    """One epoch's key: the signer, its public encoding and ids."""

    def __init__(self, epoch, privateKey):
        self.epoch = epoch
        self.signer = BlindSigner(privateKey)
        self.publicKey = privateKey.public_key()
        self.spki = tokens.encodePublicKey(self.publicKey)
        self.tokenKeyId = tokens.tokenKeyId(self.spki)

    @property
    def truncatedId(self):
        return self.tokenKeyId[-1]


class IssuerKeyStore:
    """
    @param schedule: the L{meshvpn.payments.epochs.EpochSchedule}.
    @param generate: C{callable() -> RSAPrivateKey} (tests may share one).
    """

    def __init__(self, dataDir, schedule, generate=None):
        self.directory = os.path.join(dataDir, KEYS_DIR)
        ensurePrivateDirectory(self.directory)
        self.schedule = schedule
        self._generate = generate or (lambda: rsa.generate_private_key(65537, tokens.MODULUS_BITS))
        self.keys = {}  # epoch -> EpochKey
        for name in sorted(os.listdir(self.directory)):
            m = _NAME.match(name)
            if m:
                pem = readSecretFile(os.path.join(self.directory, name))
                self.keys[int(m.group(1))] = EpochKey(int(m.group(1)), serialization.load_pem_private_key(pem, None))

    def _path(self, epoch):
        return os.path.join(self.directory, f"epoch-{epoch}.pem")

    def keyFor(self, epoch):
        """The key of C{epoch}, made and stored if it does not exist yet."""
        key = self.keys.get(epoch)
        if key is None:
            taken = {k.truncatedId for k in self.keys.values()}
            while True:
                private = self._generate()
                key = EpochKey(epoch, private)
                if key.truncatedId not in taken:
                    break
            pem = private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            writeSecretFile(self._path(epoch), pem)
            self.keys[epoch] = key
        return key

    def prepare(self, now):
        """Make sure the current and the next epoch have keys; drop expired ones. @return: the current key."""
        epoch = self.schedule.epochAt(now)
        self.prune(now)
        current = self.keyFor(epoch)
        self.keyFor(epoch + 1)
        return current

    def current(self, now):
        return self.keyFor(self.schedule.epochAt(now))

    def signingKey(self, truncatedId, now):
        """
        The key a TokenRequest names: the current epoch's, or the previous
        one's (a buyer who read the keys just before the epoch turned).

        @return: an L{EpochKey} or C{None}.
        """
        epoch = self.schedule.epochAt(now)
        for e in (epoch, epoch - 1):
            key = self.keys.get(e)
            if key is not None and key.truncatedId == truncatedId:
                return key
        return None

    def live(self, now):
        """Keys whose tokens are spendable at C{now} (or that sign next), oldest first."""
        return [k for e, k in sorted(self.keys.items()) if now < self.schedule.spendableUntil(e)]

    def byKeyId(self, tokenKeyId):
        for key in self.keys.values():
            if key.tokenKeyId == tokenKeyId:
                return key
        return None

    def prune(self, now):
        """Delete the keys whose tokens have expired. @return: their token key ids."""
        gone = []
        for epoch in [e for e in self.keys if now >= self.schedule.spendableUntil(e)]:
            gone.append(self.keys.pop(epoch).tokenKeyId)
            try:
                os.unlink(self._path(epoch))
            except FileNotFoundError:
                pass
        return gone
