"""Proof of work bound to a node's Ed25519 key: what it costs to put an identity in the DHT.

Keys are free, so without a cost one machine could mint an identity per
datagram.  A DHT node carries an 8-byte nonce such that

    SHA-256("meshvpn-dht-pow-v1\\0" || identity public key || nonce)

starts with at least L{DEFAULT_BITS} zero bits (the dynamic puzzle of
S/Kademlia, bound to the key instead of the id, which is its hash).  Finding
one takes 2^bits hashes on average (about half a second of one core here at
20 bits, doc/dht.md); checking one is a single hash, done before any contact
enters a routing table or a lookup's shortlist.  The solved nonce is cached
in the node's data dir (0600, written atomically) so a restart costs nothing.
Clients (client mode) never enter tables and need no work.
"""

import functools
import hashlib
import json
import os
import struct

from meshvpn.secretfile import writeSecretFile

DOMAIN = b"meshvpn-dht-pow-v1\x00"
DEFAULT_BITS = 20
NONCE_LEN = 8
NO_WORK = b"\x00" * NONCE_LEN
WORK_FILE = "dht-work.json"
_NONCE = struct.Struct("!Q")


def leadingZeroBits(digest):
    """@return: the number of leading zero bits of C{digest}."""
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


@functools.lru_cache(maxsize=65536)
def workBits(key, nonce):
    """@return: the zero bits the pair (C{key}, C{nonce}) proves (one hash; remembered)."""
    return leadingZeroBits(hashlib.sha256(DOMAIN + key + nonce).digest())


def checkWork(key, nonce, bits):
    """@return: C{True} if C{nonce} proves at least C{bits} of work for C{key}."""
    if bits <= 0:
        return True
    if len(nonce) != NONCE_LEN or len(key) != 32:
        return False
    return workBits(key, nonce) >= bits


def solve(key, bits, start=0):
    """
    Find a nonce proving C{bits} of work for C{key}: 2^bits hashes on average.

    @return: the 8-byte nonce.
    """
    if bits <= 0:
        return NO_WORK
    base = hashlib.sha256(DOMAIN + key)
    limit = 1 << (256 - bits)
    pack = _NONCE.pack
    n = start
    while True:
        nonce = pack(n & 0xFFFFFFFFFFFFFFFF)
        h = base.copy()
        h.update(nonce)
        if int.from_bytes(h.digest(), "big") < limit:
            return nonce
        n += 1


def loadOrSolve(dataDir, key, bits, log=None):
    """
    The nonce for C{key} cached in C{dataDir}, or a freshly solved one (then cached).

    A cache for another key, too little work, or a damaged file is solved
    again and replaced; nothing in it is trusted without the one-hash check.
    """
    path = os.path.join(dataDir, WORK_FILE)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(4096))
        nonce = bytes.fromhex(data["nonce"])
        if data.get("version") == 1 and bytes.fromhex(data["key"]) == key and checkWork(key, nonce, bits):
            return nonce
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if log is not None:
            log.warn("re-solving the DHT proof of work: {path} unusable ({why})", path=path, why=str(e)[:80])
    nonce = solve(key, bits)
    body = {"version": 1, "key": key.hex(), "nonce": nonce.hex(), "bits": workBits(key, nonce)}
    writeSecretFile(path, json.dumps(body).encode())
    return nonce
