"""Payments: bandwidth paid for with Monero, spent as unlinkable blind-signed tokens.

Why a plane of its own: the exit (which gates circuits on tokens) and the
client (which spends them) both need the token format and its checks, and
the issuer role needs the Monero wallet and the signing keys; none of that
belongs to either edge.  The pieces, bottom up:

- C{blindrsa}: RSA blind signatures (RFC 9474);
- C{tokens}: Privacy Pass tokens of type 0x0002 (RFC 9578) built on them;
- C{epochs}, C{issuerkeys}, C{records}: per-epoch issuer keys and how they
  are published in the DHT, signed by the issuer's node key;
- C{spentstore}: the durable double-spending check;
- C{monero}: Monero's wallet and daemon JSON-RPC over Twisted's HTTP client;
- C{purchases}, C{issuer}, C{issuerhttp}: the issuer service;
- C{wallet}, C{buy}: the user's token wallet and the purchase flow;
- C{paymsg}: the PAYMENT relay message carried on circuits.

doc/payments.md has the protocol, the privacy argument and its limits.
"""
