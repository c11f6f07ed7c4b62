"""Fixed keys and clock for building the seed corpora from real, signed messages.

Seeds are the project's own messages serialised by its own encoders (the
bytes a node really sends), so the fuzzer starts inside every format
instead of spending its time finding the magic numbers.  The keys are fixed
so regenerating the corpus changes nothing that did not change.
"""

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from meshvpn.identity import NodeIdentity

# A fixed time (2026-11-29) the signed seeds are "published" at.
NOW = 1796000000


def identity(n=1):
    """A node identity derived from the small number C{n} (never a real node's)."""
    return NodeIdentity(SigningKey(bytes([n]) * 32), PrivateKey(bytes([n + 100]) * 32))
