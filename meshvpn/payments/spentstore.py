"""The spent-token store: each token is accepted once, across restarts.

Why on disk and per epoch: a token that was accepted before a crash or a
restart must still be refused after it (the task is "spent stay spent"),
and the list only has to last as long as the epoch's tokens are spendable,
so one append-only file per issuer key (one key per epoch) is dropped
whole when that epoch's tokens expire.

A spend is recorded (appended, flushed and fsynced) before it is
acknowledged, so an acknowledged spend survives a crash.  A record is the
token's 32-byte nullifier (L{meshvpn.payments.tokens.Token.nullifier}); a
torn last record after a crash is cut off when the file is read.  Only
tokens whose signature was verified reach the store, so its size is bounded
by the tokens the issuer sold in the epoch.  Files are 0600 in a 0700
directory: which tokens were spent, and when the file grew, is nobody
else's business.
"""

import os

from zope.interface import implementer

from meshvpn.interfaces import ISpentTokenStore
from meshvpn.secretfile import ensurePrivateDirectory

RECORD = 32


@implementer(ISpentTokenStore)
class SpentTokenStore:
    def __init__(self, directory):
        self.directory = directory
        ensurePrivateDirectory(directory)
        self._sets = {}  # key id -> set of nullifiers
        self._files = {}  # key id -> open append file
        for name in os.listdir(directory):
            if name.startswith("spent-") and name.endswith(".log"):
                try:
                    keyId = bytes.fromhex(name[len("spent-"):-len(".log")])
                except ValueError:
                    continue
                if len(keyId) == 32:
                    self._load(keyId)

    def _path(self, keyId):
        return os.path.join(self.directory, f"spent-{keyId.hex()}.log")

    def _load(self, keyId):
        path = self._path(keyId)
        with open(path, "rb") as f:
            data = f.read()
        whole = len(data) - len(data) % RECORD
        if whole != len(data):  # a record torn by a crash: never acknowledged, so drop it
            with open(path, "r+b") as f:
                f.truncate(whole)
        self._sets[keyId] = {data[i:i + RECORD] for i in range(0, whole, RECORD)}

    def _file(self, keyId):
        f = self._files.get(keyId)
        if f is None:
            fd = os.open(self._path(keyId), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            f = self._files[keyId] = os.fdopen(fd, "ab", buffering=0)
        return f

    def isSpent(self, keyId, nullifier):
        return nullifier in self._sets.get(keyId, ())

    def spend(self, keyId, nullifier):
        if len(nullifier) != RECORD or len(keyId) != 32:
            raise ValueError("key id and nullifier are 32 bytes")
        spent = self._sets.setdefault(keyId, set())
        if nullifier in spent:
            return False
        f = self._file(keyId)
        f.write(nullifier)
        os.fsync(f.fileno())
        spent.add(nullifier)
        return True

    def count(self, keyId=None):
        if keyId is not None:
            return len(self._sets.get(keyId, ()))
        return sum(len(s) for s in self._sets.values())

    def keys(self):
        return list(self._sets)

    def forgetKey(self, keyId):
        f = self._files.pop(keyId, None)
        if f is not None:
            f.close()
        self._sets.pop(keyId, None)
        try:
            os.unlink(self._path(keyId))
        except FileNotFoundError:
            pass

    def close(self):
        for f in self._files.values():
            f.close()
        self._files.clear()
