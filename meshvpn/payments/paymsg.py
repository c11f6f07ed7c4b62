"""The PAYMENT relay message: tokens from the client to the exit, receipts and requests back.

Why one relay command with a type byte: a circuit needs three things said
about payment (here is a token; that token bought this much, or was
refused and why; credit is running low, send another) and the relay layer
only has to route one new command number (C{RelayCommand.PAYMENT}, stream
id 0, end to end between the client and its exit, so no middle relay sees
a token).  Layouts:

  TOKEN   (client -> exit): 0x01 | token (RFC 9578, 354 bytes)
  RECEIPT (exit -> client): 0x02 | u8 status | u64 credit in bytes
  NEEDED  (exit -> client): 0x03 | u64 credit | u64 free rate (bytes/s; 0
                            none; 2**64-1 unlimited) | u8 n | n issuer ids

The parser checks every length and refuses anything else with
L{PaymentMessageError}, which closes only the offending circuit.
"""

import struct

import attrs

from meshvpn.onion.cells import CellError
from meshvpn.payments.tokens import TOKEN_LEN, Token, TokenFormatError

TOKEN, RECEIPT, NEEDED = 1, 2, 3
ACCEPTED, DOUBLE_SPENT, INVALID, UNKNOWN_KEY, NOT_ACCEPTED, REVOKED, BUSY, EXPIRED = range(8)
STATUS_NAMES = {
    ACCEPTED: "accepted", DOUBLE_SPENT: "already spent", INVALID: "invalid (bad signature or format)",
    UNKNOWN_KEY: "signed by a key this exit does not know", NOT_ACCEPTED: "issuer not accepted here",
    REVOKED: "revoked: the issuer reports it spent elsewhere", BUSY: "enough credit already",
    EXPIRED: "its epoch has expired",
}
MAX_ISSUERS = 8
UNLIMITED = 2**64 - 1


class PaymentMessageError(CellError):
    """A PAYMENT relay message is malformed (a protocol error: the circuit is closed)."""


@attrs.frozen
class TokenMessage:
    token: Token

    def encode(self):
        return bytes([TOKEN]) + self.token.encode()


@attrs.frozen
class Receipt:
    status: int
    credit: int

    def encode(self):
        return struct.pack("!BBQ", RECEIPT, self.status, max(0, self.credit))


@attrs.frozen
class Needed:
    credit: int
    freeRate: int
    issuers: tuple

    def encode(self):
        if len(self.issuers) > MAX_ISSUERS:
            raise PaymentMessageError(f"at most {MAX_ISSUERS} issuers")
        return struct.pack("!BQQB", NEEDED, max(0, self.credit), self.freeRate, len(self.issuers)) + b"".join(self.issuers)


def parsePayment(body):
    """@return: a L{TokenMessage}, L{Receipt} or L{Needed}. @raise PaymentMessageError: malformed."""
    body = bytes(body)
    if not body:
        raise PaymentMessageError("empty PAYMENT message")
    kind = body[0]
    if kind == TOKEN:
        if len(body) != 1 + TOKEN_LEN:
            raise PaymentMessageError(f"PAYMENT TOKEN of {len(body) - 1} bytes, expected {TOKEN_LEN}")
        try:
            return TokenMessage(Token.decode(body[1:]))
        except TokenFormatError as e:
            raise PaymentMessageError(f"PAYMENT TOKEN: {e}") from None
    if kind == RECEIPT:
        if len(body) != 10:
            raise PaymentMessageError("PAYMENT RECEIPT must be 10 bytes")
        _, status, credit = struct.unpack("!BBQ", body)
        if status not in STATUS_NAMES:
            raise PaymentMessageError(f"PAYMENT RECEIPT status {status} unknown")
        return Receipt(status, credit)
    if kind == NEEDED:
        if len(body) < 18:
            raise PaymentMessageError("PAYMENT NEEDED shorter than its header")
        _, credit, freeRate, n = struct.unpack_from("!BQQB", body)
        if n > MAX_ISSUERS or len(body) != 18 + 32 * n:
            raise PaymentMessageError("PAYMENT NEEDED issuer list does not match its length")
        return Needed(credit, freeRate, tuple(body[18 + 32 * i:50 + 32 * i] for i in range(n)))
    raise PaymentMessageError(f"PAYMENT message type {kind} unknown")
