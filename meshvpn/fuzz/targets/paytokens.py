"""Fuzz target: the token messages of payments (payments/tokens.py): challenge, request, token, issuer key, and
a token's verification and a blind signature's finalisation against a real issuer key.

The first input byte picks the message; an issuer reads requests, an exit
reads and verifies tokens, a client reads an issuer's key and its signed
responses (C{finishToken}).
"""

import functools

from cryptography.hazmat.primitives.asymmetric import rsa

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.payments import blindrsa, tokens


@functools.lru_cache(maxsize=1)
def _issuer():
    key = rsa.generate_private_key(public_exponent=65537, key_size=tokens.MODULUS_BITS)
    public = key.public_key()
    challenge = tokens.meshChallenge(bytes(32))
    request, pending = tokens.requestToken(public, challenge)
    return key, public, challenge, request, pending


def _token(data):
    token = tokens.Token.decode(data)
    tokens.verifyToken(token, _issuer()[1])


def _finish(data):
    _, public, _, _, pending = _issuer()
    tokens.finishToken(public, pending, data)


_KINDS = [tokens.TokenChallenge.decode, tokens.TokenRequest.decode, _token, tokens.decodePublicKey, _finish]


def _run(data):
    if data:
        _KINDS[data[0] % len(_KINDS)](data[1:])


def _seeds():
    key, public, challenge, request, pending = _issuer()
    signer = blindrsa.BlindSigner(key) if hasattr(blindrsa, "BlindSigner") else None
    out = [b"\0" + challenge.encode(), b"\1" + request.encode(), b"\3" + tokens.encodePublicKey(public)]
    if signer is not None:
        response = tokens.signRequest(signer, tokens.tokenKeyId(tokens.encodePublicKey(public)), request)
        out += [b"\2" + tokens.finishToken(public, pending, response).encode(), b"\4" + response]
    return out


TARGET = FuzzTarget("pay-tokens", "payments/tokens.py challenge/request/token/SPKI decoders, verifyToken, finishToken",
                    (tokens.TokenFormatError, blindrsa.BlindSignatureError), _run, _seeds)
