"""The issuer's HTTP API seen from a wallet or an exit (Twisted's HTTP client).

Why a class: it checks what the issuer says before anyone relies on it: the
info's keys must decode as RFC 9578 issuer keys whose ids match, the
issuer id must be a node id, the amounts integers; a bad answer is an
L{IssuerError} with the issuer's own message when it gave one.
"""

import hashlib
import json

import attrs

from meshvpn.errors import MeshVPNError
from meshvpn.payments import httpclient, tokens
from meshvpn.payments.tokens import TokenFormatError


class IssuerError(MeshVPNError):
    """The issuer could not be reached or refused; C{status} is its HTTP status (or C{None})."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


@attrs.frozen
class SigningKey:
    epoch: int
    spki: bytes
    publicKey: object
    spendableUntil: int

    @property
    def tokenKeyId(self):
        return tokens.tokenKeyId(self.spki)


@attrs.frozen
class IssuerOffer:
    issuerId: bytes
    price: int
    packs: tuple
    confirmations: int
    signing: SigningKey
    identityKey: object = None  # the issuer's node key (Ed25519, SHA-256 of it is the id), if it gave one


def _int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise IssuerError(f"issuer answered a bad {what}")
    return value


class IssuerClient:
    def __init__(self, reactor, baseURL, timeout=60.0, agent=None):
        self.reactor = reactor
        self.base = baseURL.rstrip("/")
        self.timeout = timeout
        self.agent = agent

    async def _call(self, method, path, body=None, contentType="application/json", limit=1 << 20):
        code, data = await httpclient.request(
            self.reactor, method, self.base + path, body, {"Content-Type": contentType} if body is not None else None,
            timeout=self.timeout, limit=limit, agent=self.agent, error=IssuerError,
        )
        if code >= 400:
            try:
                message = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {code}"
            raise IssuerError(f"issuer: {message}"[:300], code)
        return code, data

    async def _json(self, method, path, body=None):
        _, data = await self._call(method, path, None if body is None else json.dumps(body).encode())
        try:
            answer = json.loads(data)
        except ValueError:
            raise IssuerError("issuer answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise IssuerError("issuer answered something that is not a JSON object")
        return answer

    async def offer(self):
        """@return: an L{IssuerOffer} (price, packs, the key signing now)."""
        info = await self._json("GET", "/v1/info")
        try:
            issuerId = bytes.fromhex(info["issuer_id"])
            packs = tuple(_int(p, "pack") for p in info["packs"])
            signing = [k for k in info["keys"] if k.get("signing")]
            if len(issuerId) != 32 or len(signing) != 1:
                raise ValueError
            k = signing[0]
            spki = bytes.fromhex(k["spki"])
            key = SigningKey(_int(k["epoch"], "epoch"), spki, tokens.decodePublicKey(spki),
                             _int(k["spendable_until"], "expiry"))
            if key.tokenKeyId.hex() != k["token_key_id"]:
                raise ValueError
            identityKey = info.get("identity_key")
            if identityKey is not None:
                identityKey = bytes.fromhex(identityKey)
                if hashlib.sha256(identityKey).digest() != issuerId:
                    raise ValueError
        except (KeyError, TypeError, ValueError, AttributeError, TokenFormatError):
            raise IssuerError("issuer info is malformed") from None
        return IssuerOffer(issuerId, _int(info.get("price"), "price"), packs,
                           _int(info.get("confirmations"), "confirmations"), key, identityKey)

    async def purchase(self, count):
        answer = await self._json("POST", "/v1/purchases", {"tokens": count})
        for field in ("purchase", "address"):
            if not isinstance(answer.get(field), str):
                raise IssuerError("issuer's purchase answer is malformed")
        _int(answer.get("amount"), "amount")
        return answer

    async def status(self, purchaseId):
        answer = await self._json("GET", f"/v1/purchases/{purchaseId}")
        for field in ("amount", "seen", "received", "confirmations", "confirmations_needed"):
            _int(answer.get(field), field)
        return answer

    async def sign(self, purchaseId, requestBody, count):
        _, data = await self._call("POST", f"/v1/purchases/{purchaseId}/tokens", requestBody,
                                   "application/private-token-request")
        if len(data) != count * tokens.RESPONSE_LEN:
            raise IssuerError(f"issuer answered {len(data)} bytes for {count} tokens")
        return [data[i:i + tokens.RESPONSE_LEN] for i in range(0, len(data), tokens.RESPONSE_LEN)]

    async def redeem(self, encodedTokens):
        """@return: one status byte per token (see L{meshvpn.payments.issuer})."""
        _, data = await self._call("POST", "/v1/redeem", b"".join(encodedTokens), "application/octet-stream")
        if len(data) != len(encodedTokens):
            raise IssuerError("issuer's redeem answer has the wrong length")
        return data
