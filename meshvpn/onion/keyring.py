"""Onion key rotation: which X25519 onion secrets a relay accepts CREATE2 for.

A relay's descriptor carries its current and its next onion key.  At each
rotation next becomes current, a fresh next is made, and the old current stays
valid for an overlap window, so clients holding a descriptor that is up to
one rotation old still build circuits (ntor names B in the onionskin, so the
relay picks the matching secret; see L{meshvpn.onion.ntor.serverRespond}).
"""

import base64
import binascii
import os

from nacl.bindings import crypto_scalarmult_base
from nacl.utils import random as randomBytes

from meshvpn.errors import KeyFileError
from meshvpn.secretfile import readSecretFile, writeSecretFile

DEFAULT_LIFETIME = 7 * 24 * 3600
DEFAULT_OVERLAP = 24 * 3600
RING_FILE = "onion-ring.key"
_HEADER = "meshvpn-x25519-onion-ring v1"


class OnionKeyRing:
    """
    @ivar current: the secret of the current onion key.
    @ivar next: the secret of the next one (already accepted).

    Public keys are computed once, when a secret is set: L{findKey} runs on
    every CREATE2, and an X25519 base-point multiplication there would add
    two of them (about 60 us) to each handshake, for whoever sends one.
    """

    def __init__(self, clock, current=None, next=None, overlap=DEFAULT_OVERLAP, generate=None, path=None):
        self._clock = clock
        self._generate = generate or (lambda: randomBytes(32))
        self.overlap = overlap
        self.path = path
        self.current = current if current is not None else self._generate()
        self.next = next if next is not None else self._generate()
        self._previous = []  # [(secret, public, expiresAt)]
        self.rotatedAt = clock.seconds()

    # current and next keep their public keys beside them (see the class docstring).

    @property
    def current(self):
        return self._current

    @current.setter
    def current(self, secret):
        self._current, self._currentPublic = secret, self.public(secret)

    @property
    def next(self):
        return self._next

    @next.setter
    def next(self, secret):
        self._next, self._nextPublic = secret, self.public(secret)

    @classmethod
    def loadOrCreate(cls, clock, path, seed=None, overlap=DEFAULT_OVERLAP):
        """
        Load the ring from C{path} (0600, see L{save}), or create it with
        C{seed} (the node's existing onion secret) as the current key.

        @raise KeyFileError: the file exists but is corrupt or too permissive.
        """
        if not os.path.lexists(path):
            ring = cls(clock, current=seed, overlap=overlap, path=path)
            ring.save()
            return ring
        ring = cls(clock, overlap=overlap, path=path)
        ring._load(readSecretFile(path))
        return ring

    def _load(self, raw):
        def corrupt(why):
            return KeyFileError(f"{self.path}: corrupt onion key ring ({why}); not overwriting it")

        try:
            lines = raw.decode("ascii").splitlines()
        except UnicodeDecodeError:
            raise corrupt("not ASCII") from None
        if not lines or lines[0] != _HEADER:
            raise corrupt(f"first line must be {_HEADER!r}")
        fields, previous = {}, []

        def key(text):
            secret = base64.b64decode(text, validate=True)
            if len(secret) != 32:
                raise ValueError
            return secret

        for line in lines[1:]:
            name, _, value = line.partition(": ")
            parts = value.split()
            try:
                if name in ("current", "next") and len(parts) == 1 and name not in fields:
                    fields[name] = key(parts[0])
                elif name == "previous" and len(parts) == 2 and len(previous) < 16:
                    secret = key(parts[0])
                    previous.append((secret, self.public(secret), float(parts[1])))
                elif name == "rotated" and len(parts) == 1:
                    self.rotatedAt = float(parts[0])
                else:
                    raise ValueError
            except (ValueError, binascii.Error):
                raise corrupt(f"bad line {name[:20]!r}") from None
        if set(fields) != {"current", "next"}:
            raise corrupt("needs one current and one next key")
        self.current, self.next = fields["current"], fields["next"]
        self._previous = previous

    def save(self):
        """Write the ring to its file atomically, mode 0600 (no-op without a path)."""
        if self.path is None:
            return
        b64 = lambda k: base64.b64encode(k).decode()  # noqa: E731
        lines = [_HEADER, f"current: {b64(self.current)}", f"next: {b64(self.next)}"]
        lines += [f"previous: {b64(secret)} {expiresAt!r}" for secret, _, expiresAt in self._previous]
        lines.append(f"rotated: {self.rotatedAt!r}")
        writeSecretFile(self.path, ("\n".join(lines) + "\n").encode())

    @staticmethod
    def public(secret):
        return crypto_scalarmult_base(secret)

    def rotate(self):
        """Make next current, create a new next, keep the old current for C{overlap} seconds."""
        now = self._clock.seconds()
        self._previous = [p for p in self._previous if p[2] > now]
        self._previous.append((self.current, self._currentPublic, now + self.overlap))
        self.current, self.next = self.next, self._generate()
        self.rotatedAt = now
        self.save()

    def publicKeys(self):
        """@return: C{{"current": bytes, "next": bytes}} for the descriptor."""
        return {"current": self._currentPublic, "next": self._nextPublic}

    def findKey(self, B):
        """
        @return: the secret whose public key is C{B} if it is accepted now, else C{None}.
        """
        if B == self._currentPublic:
            return self._current
        if B == self._nextPublic:
            return self._next
        now = self._clock.seconds()
        for secret, public, expiresAt in self._previous:
            if public == B and now < expiresAt:
                return secret
        return None
