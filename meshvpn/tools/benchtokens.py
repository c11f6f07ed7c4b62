"""``meshvpn bench tokens``: how fast tokens are made, signed and checked (in process, no Monero).

Why these numbers: the issuer's capacity is its blind-signing rate (one
2048-bit RSA private-key operation, plus our own blinding, per token); a
client pays the blinding and finalizing once per token bought; an exit pays
one RSA-PSS verification and one durable spent-store append per token
accepted, on the data path.  With one token per N megabytes the exit's cost
per byte is tiny, and these rates say how tiny.

Prints one JSON object with ``--json``.  Rates are per second of CPU time
on one core (the machine may be shared); the exit's accept rate, which
waits for an fsync, is per second of wall-clock time.
"""

import json
import os
import tempfile
import time

from cryptography.hazmat.primitives.asymmetric import rsa

from meshvpn.payments import tokens
from meshvpn.payments.blindrsa import BlindSigner
from meshvpn.payments.spentstore import SpentTokenStore


def addArguments(p):
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--count", type=int, default=500, help="tokens to issue and check (default 500)")


def _rate(n, seconds):
    return round(n / seconds, 1) if seconds > 0 else None


def measure(count):
    t0 = time.perf_counter()
    key = rsa.generate_private_key(65537, tokens.MODULUS_BITS)
    keygen = time.perf_counter() - t0
    signer = BlindSigner(key)
    pub = key.public_key()
    keyId = tokens.tokenKeyId(tokens.encodePublicKey(pub))
    challenge = tokens.meshChallenge(b"\x07" * 32)

    cpu = time.process_time
    t0 = cpu()
    requests = [tokens.requestToken(pub, challenge) for _ in range(count)]
    blind = cpu() - t0

    t0 = cpu()
    responses = [tokens.signRequest(signer, keyId, tokens.TokenRequest.decode(r.encode())) for r, _ in requests]
    sign = cpu() - t0

    t0 = cpu()
    issued = [tokens.finishToken(pub, p, resp) for (_, p), resp in zip(requests, responses)]
    finalize = cpu() - t0

    encoded = [t.encode() for t in issued]
    t0 = cpu()
    for raw in encoded:
        tokens.verifyToken(tokens.Token.decode(raw), pub)
    verify = cpu() - t0

    with tempfile.TemporaryDirectory(prefix="meshvpn-bench-tokens-") as d:
        store = SpentTokenStore(os.path.join(d, "spent"))
        t0 = time.perf_counter()
        for raw in encoded:
            token = tokens.Token.decode(raw)
            tokens.verifyToken(token, pub)
            assert store.spend(token.tokenKeyId, token.nullifier())
        accept = time.perf_counter() - t0
        t0 = cpu()
        refused = sum(1 for raw in encoded if not store.spend(keyId, tokens.Token.decode(raw).nullifier()))
        doubles = cpu() - t0
        store.close()
    assert refused == count
    return {
        "tokens": count,
        "key_bits": tokens.MODULUS_BITS,
        "variant": tokens.VARIANT.name,
        "issuer_key_generation_s": round(keygen, 3),
        "client_blind_per_s": _rate(count, blind),
        "issuer_blind_sign_per_s": _rate(count, sign),
        "client_finalize_per_s": _rate(count, finalize),
        "exit_verify_per_s": _rate(count, verify),
        "exit_accept_with_fsynced_spend_per_s": _rate(count, accept),
        "exit_double_spend_refusals_per_s": _rate(count, doubles),
        "token_bytes": tokens.TOKEN_LEN,
        "request_bytes": tokens.REQUEST_LEN,
    }


def run(args, out=print):
    result = measure(args.count)
    if args.json:
        out(json.dumps(result))
    else:
        for k, v in result.items():
            out(f"{k:40} {v}")
    return 0
