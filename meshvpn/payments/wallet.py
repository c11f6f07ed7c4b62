"""The user's token wallet: a directory the ``meshvpn wallet`` command fills and the client node spends from.

Why files: two processes share it (the command buying, the node spending),
and a token is a bearer secret that must neither be handed out twice nor be
lost in a crash.  So each token is one file, written atomically and 0600
(L{meshvpn.secretfile}), and taking a token is an atomic C{rename} into
C{spent/}: if two processes race for one, exactly one gets it.

  tokens/ISSUER/FROM-UNTIL-NONCE.tok    a spendable token (its bytes)
  spent/ISSUER/...                       taken tokens (kept until they expire)
  pending/HASH.json                      a purchase in progress (see buy.py)
  issuers/ISSUER.RAND.ask                ``meshvpn wallet`` asks for an issuer's DHT records
  issuers/ISSUER.view                    ... which the client node reading the DHT writes

The last two are how ``meshvpn wallet buy`` checks an issuer's key against
the issuer's DHT record before paying: the wallet command is no DHT node,
the client node sharing the directory is (L{meshvpn.client.paying}).

FROM is when the token may first be spent: the wallet adds a random delay
after each purchase, so the moment a payment confirms and the moment its
tokens appear at an exit are not the same (doc/payments.md, "what a
colluding issuer and exit still learn").  UNTIL is when its epoch's tokens
expire.  Tokens are taken in random order, not in the order bought.
"""

import json
import os
import random
import re
import secrets

from zope.interface import implementer

from meshvpn.interfaces import ITokenWallet
from meshvpn.payments.records import IssuerInfo, IssuerKeyRecord, PaymentRecordError
from meshvpn.payments.tokens import TOKEN_LEN, Token, TokenFormatError
from meshvpn.secretfile import ensurePrivateDirectory, writeSecretFile

_NAME = re.compile(r"\A(\d{1,12})-(\d{1,12})-([0-9a-f]{16})\.tok\Z")
_ISSUER = re.compile(r"\A[0-9a-f]{64}\Z")
_ASK = re.compile(r"\A([0-9a-f]{64})\.[0-9a-f]{16}\.ask\Z")
MAX_VIEW = 64 * 1024


@implementer(ITokenWallet)
class TokenWallet:
    def __init__(self, directory, rng=None):
        self.directory = directory
        self.rng = rng or random.SystemRandom()
        for sub in ("", "tokens", "spent", "pending", "issuers"):
            ensurePrivateDirectory(os.path.join(directory, sub))

    def _dir(self, kind, issuerHex):
        if not _ISSUER.match(issuerHex):
            raise ValueError("an issuer is a 64-hex-digit node id")
        return os.path.join(self.directory, kind, issuerHex)

    def add(self, issuerId, token, spendableFrom, spendableUntil):
        """Store one token (atomically, 0600)."""
        d = self._dir("tokens", issuerId.hex())
        ensurePrivateDirectory(d)
        name = f"{int(spendableFrom)}-{int(spendableUntil)}-{token.nonce[:8].hex()}.tok"
        writeSecretFile(os.path.join(d, name), token.encode())

    def issuers(self):
        """Issuer ids (bytes) the wallet holds tokens of, spendable or not."""
        root = os.path.join(self.directory, "tokens")
        return [bytes.fromhex(n) for n in sorted(os.listdir(root)) if _ISSUER.match(n)]

    def _entries(self, issuerHex):
        d = self._dir("tokens", issuerHex)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            m = _NAME.match(name)
            if m:
                out.append((int(m.group(1)), int(m.group(2)), os.path.join(d, name)))
        return out

    def balance(self, now):
        out = {}
        for issuer in self.issuers():
            counts = {"usable": 0, "waiting": 0, "expired": 0, "next_spendable": None}
            for start, until, _ in self._entries(issuer.hex()):
                if now >= until:
                    counts["expired"] += 1
                elif now < start:
                    counts["waiting"] += 1
                    counts["next_spendable"] = min(start, counts["next_spendable"] or start)
                else:
                    counts["usable"] += 1
            out[issuer.hex()] = counts
        return out

    def usable(self, issuerId, now):
        return sum(1 for start, until, _ in self._entries(issuerId.hex()) if start <= now < until)

    def take(self, issuerId, now, avoidKeys=()):
        """
        A spendable token of C{issuerId} (moved to C{spent/}), or C{None}.

        @param avoidKeys: token key ids not to take (an exit said it does
            not know them yet): another key's token, if there is one.
        """
        candidates = [path for start, until, path in self._entries(issuerId.hex()) if start <= now < until]
        self.rng.shuffle(candidates)
        spentDir = self._dir("spent", issuerId.hex())
        ensurePrivateDirectory(spentDir)
        for path in candidates:
            if avoidKeys and self._keyIdOf(path) in avoidKeys:
                continue
            target = os.path.join(spentDir, os.path.basename(path))
            try:
                os.rename(path, target)  # atomic: one taker wins
            except FileNotFoundError:
                continue
            with open(target, "rb") as f:
                raw = f.read(TOKEN_LEN + 1)
            try:
                return Token.decode(raw)
            except TokenFormatError:
                continue  # a damaged file: skip it, it stays in spent/
        return None

    @staticmethod
    def _keyIdOf(path):
        try:
            with open(path, "rb") as f:
                return Token.decode(f.read(TOKEN_LEN + 1)).tokenKeyId
        except (OSError, TokenFormatError):
            return None

    def putBack(self, issuerId, token):
        """
        Return a taken token that was not spent (the exit refused it without
        recording it: a key it did not know yet, say).  @return: whether it
        was found among the taken ones and is spendable again.
        """
        spentDir = self._dir("spent", issuerId.hex())
        suffix = f"-{token.nonce[:8].hex()}.tok"
        try:
            names = [n for n in os.listdir(spentDir) if n.endswith(suffix) and _NAME.match(n)]
        except FileNotFoundError:
            return False
        for name in names:
            source = os.path.join(spentDir, name)
            try:
                with open(source, "rb") as f:
                    if f.read(TOKEN_LEN + 1) != token.encode():
                        continue
                os.rename(source, os.path.join(self._dir("tokens", issuerId.hex()), name))
            except FileNotFoundError:
                continue
            return True
        return False

    def prune(self, now):
        """Delete expired tokens and spent ones whose epoch is over. @return: how many."""
        gone = 0
        for kind in ("tokens", "spent"):
            root = os.path.join(self.directory, kind)
            for issuer in os.listdir(root):
                if not _ISSUER.match(issuer):
                    continue
                for name in os.listdir(os.path.join(root, issuer)):
                    m = _NAME.match(name)
                    if m and now >= int(m.group(2)):
                        os.unlink(os.path.join(root, issuer, name))
                        gone += 1
        return gone

    # -- an issuer's DHT records, asked by the wallet command, read by the client node

    def askIssuer(self, issuerId):
        """Ask the client node for C{issuerId}'s records. @return: the question (for L{stillAsked})."""
        path = os.path.join(self.directory, "issuers", f"{issuerId.hex()}.{secrets.token_hex(8)}.ask")
        writeSecretFile(path, b"")
        return path

    def stillAsked(self, ask):
        return os.path.exists(ask)

    def forgetAsk(self, ask):
        try:
            os.unlink(ask)
        except FileNotFoundError:
            pass

    def askedIssuers(self):
        """@return: C{{issuer id: [question paths]}} waiting for an answer."""
        root = os.path.join(self.directory, "issuers")
        out = {}
        for name in sorted(os.listdir(root)):
            m = _ASK.match(name)
            if m:
                out.setdefault(bytes.fromhex(m.group(1)), []).append(os.path.join(root, name))
        return out

    def answerIssuer(self, issuerId, info, keys, asks):
        """
        Store what the DHT holds for C{issuerId} (its L{IssuerInfo} or
        C{None}, its L{IssuerKeyRecord}s), then clear the C{asks}.
        """
        view = {"info": None if info is None else info.encode().hex(),
                "keys": {str(k.epoch): k.encode().hex() for k in keys}}
        writeSecretFile(os.path.join(self.directory, "issuers", f"{issuerId.hex()}.view"), json.dumps(view).encode())
        for ask in asks:
            self.forgetAsk(ask)

    def issuerView(self, issuerId):
        """
        @return: C{(IssuerInfo or None, {epoch: spki})} as the client node
            last read them; nothing readable is C{(None, {})}.
        """
        path = os.path.join(self.directory, "issuers", f"{issuerId.hex()}.view")
        try:
            with open(path, "rb") as f:
                view = json.loads(f.read(MAX_VIEW))
            info = None if view["info"] is None else IssuerInfo.decode(bytes.fromhex(view["info"]))
            keys = {}
            for raw in view["keys"].values():
                record = IssuerKeyRecord.decode(bytes.fromhex(raw))
                keys[record.epoch] = record.spki
        except (OSError, ValueError, KeyError, TypeError, AttributeError, TokenFormatError, PaymentRecordError):
            return None, {}
        return info, keys

    # -- purchases in progress

    def pendingPath(self, key):
        return os.path.join(self.directory, "pending", f"{key}.json")

    def pending(self):
        root = os.path.join(self.directory, "pending")
        return sorted(os.path.join(root, n) for n in os.listdir(root) if n.endswith(".json"))

    @staticmethod
    def newPendingKey():
        return secrets.token_hex(8)
