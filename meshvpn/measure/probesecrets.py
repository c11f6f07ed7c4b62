"""A relay's probe-plan secrets: one random 32 bytes per epoch, drawn once, kept until revealed.

A relay commits to the secret of epoch e + 1 when e starts and reveals it
when e + 1 starts (L{meshvpn.measure.probeseed}).  A relay that restarts in
between must reveal the secret it committed to, or it counts as
withholding that epoch; so the secrets are written to the node's data dir
(C{probe-secrets.json}, 0600, atomically, before the commitment goes out)
and only those of the last few epochs are kept.  Without a data dir they
live in memory (a restart then loses one epoch's reveal, nothing else).
A secret is never logged.
"""

import json
import os

from meshvpn.measure.probeplan import SECRET_BYTES
from meshvpn.secretfile import writeSecretFile

SECRETS_FILE = "probe-secrets.json"
KEEP = 4  # epochs of secrets kept (the one revealed, the one committed, and slack)


class ProbeSecrets:
    def __init__(self, dataDir=None, random=os.urandom):
        self.path = None if dataDir is None else os.path.join(dataDir, SECRETS_FILE)
        self.random = random
        self._secrets = self._load()

    def _load(self):
        if self.path is None or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, "rb") as f:
                body = json.loads(f.read(4096))
            got = {int(e): bytes.fromhex(s) for e, s in body.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}  # unreadable: the next epochs draw afresh (a lost reveal counts as withheld, once)
        return {e: s for e, s in got.items() if len(s) == SECRET_BYTES and 0 <= e < 2**32}

    def secretOf(self, epoch):
        """The secret of C{epoch}, drawn (and saved) the first time it is asked for."""
        secret = self._secrets.get(epoch)
        if secret is None:
            secret = self._secrets[epoch] = self.random(SECRET_BYTES)
            for old in sorted(self._secrets)[:-KEEP]:
                del self._secrets[old]
            if self.path is not None:
                body = {str(e): s.hex() for e, s in sorted(self._secrets.items())}
                writeSecretFile(self.path, json.dumps(body).encode())
        return secret
