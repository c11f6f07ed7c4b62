"""Address tokens: proof that a request's source address is real (the BEP 5 announce token, for every request).

UDP source addresses can be spoofed, so an answer bigger than its request
would let anyone aim our answers at a victim.  Every answer carries a token
for the requester's IP:

    token = BLAKE2b-64(key = our secret, epoch || IP)        epoch = now // 300 s

and a request that echoes a token we issued (this epoch or the last) comes
from an address that received our earlier answer: only such requests get
answers larger than themselves, and only they may STORE (each STORE costs us
a signature check).  Tokens are bound to the IP, not the port (a NAT may
change ports; the amplification victim would be the same host).

L{TokenCache} is the requester's side: the tokens peers gave us, bounded,
used while they are surely still valid.
"""

import hashlib
import os
import socket
from collections import OrderedDict

TOKEN_LEN = 8
NO_TOKEN = b"\x00" * TOKEN_LEN
EPOCH = 300.0  # seconds; a token is accepted for one to two epochs
USE_FOR = 240.0  # a cached token is used for less than one epoch, so it is never stale


def _ipBytes(host):
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except (OSError, ValueError):
        return host.encode("ascii", "replace")[:64]


class TokenIssuer:
    """Issues and checks tokens with a secret that lives only in memory."""

    def __init__(self, clock, secret=None):
        self.clock = clock
        self.secret = secret if secret is not None else os.urandom(32)

    def _token(self, host, epoch):
        data = epoch.to_bytes(8, "big") + _ipBytes(host)
        token = hashlib.blake2b(data, key=self.secret, digest_size=TOKEN_LEN).digest()
        return token if token != NO_TOKEN else b"\x00" * (TOKEN_LEN - 1) + b"\x01"

    def issue(self, host):
        return self._token(host, int(self.clock.seconds() // EPOCH))

    def valid(self, host, token):
        if token == NO_TOKEN:
            return False
        epoch = int(self.clock.seconds() // EPOCH)
        return token == self._token(host, epoch) or token == self._token(host, epoch - 1)


class TokenCache:
    """The tokens peers issued us, by address: at most C{size}, each used for L{USE_FOR} seconds."""

    def __init__(self, clock, size=4096):
        self.clock = clock
        self.size = size
        self._tokens = OrderedDict()  # address -> (token, received)

    def remember(self, address, token):
        if token == NO_TOKEN:
            return
        self._tokens.pop(address, None)
        self._tokens[address] = (token, self.clock.seconds())
        while len(self._tokens) > self.size:
            self._tokens.popitem(last=False)

    def get(self, address):
        """@return: a token for C{address} that is surely still valid, or L{NO_TOKEN}."""
        entry = self._tokens.get(address)
        if entry is None:
            return NO_TOKEN
        token, received = entry
        if self.clock.seconds() - received >= USE_FOR:
            del self._tokens[address]
            return NO_TOKEN
        return token

    def __len__(self):
        return len(self._tokens)
