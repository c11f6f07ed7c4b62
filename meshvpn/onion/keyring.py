"""Onion key rotation: which X25519 onion secrets a relay accepts CREATE2 for.

A relay's descriptor carries its current and its next onion key.  At each
rotation next becomes current, a fresh next is made, and the old current stays
valid for an overlap window, so clients holding a descriptor that is up to
one rotation old still build circuits (ntor names B in the onionskin, so the
relay picks the matching secret; see L{meshvpn.onion.ntor.serverRespond}).
"""

from nacl.bindings import crypto_scalarmult_base
from nacl.utils import random as randomBytes

DEFAULT_LIFETIME = 7 * 24 * 3600
DEFAULT_OVERLAP = 24 * 3600


class OnionKeyRing:
    """
    @ivar current: the secret of the current onion key.
    @ivar next: the secret of the next one (already accepted).
    """

    def __init__(self, clock, current=None, next=None, overlap=DEFAULT_OVERLAP, generate=None):
        self._clock = clock
        self._generate = generate or (lambda: randomBytes(32))
        self.overlap = overlap
        self.current = current if current is not None else self._generate()
        self.next = next if next is not None else self._generate()
        self._previous = []  # [(secret, public, expiresAt)]

    @staticmethod
    def public(secret):
        return crypto_scalarmult_base(secret)

    def rotate(self):
        """Make next current, create a new next, keep the old current for C{overlap} seconds."""
        now = self._clock.seconds()
        self._previous = [p for p in self._previous if p[2] > now]
        self._previous.append((self.current, self.public(self.current), now + self.overlap))
        self.current, self.next = self.next, self._generate()

    def publicKeys(self):
        """@return: C{{"current": bytes, "next": bytes}} for the descriptor."""
        return {"current": self.public(self.current), "next": self.public(self.next)}

    def findKey(self, B):
        """
        @return: the secret whose public key is C{B} if it is accepted now, else C{None}.
        """
        for secret in (self.current, self.next):
            if self.public(secret) == B:
                return secret
        now = self._clock.seconds()
        for secret, public, expiresAt in self._previous:
            if public == B and now < expiresAt:
                return secret
        return None
