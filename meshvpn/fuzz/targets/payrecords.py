"""Fuzz target: the payments records read from the DHT (payments/records.py): issuer info, issuer key, exit terms."""

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.payments.epochs import EpochSchedule
from meshvpn.payments.records import ExitTerms, IssuerInfo, IssuerKeyRecord, PaymentRecordError
from meshvpn.payments.tokens import TokenFormatError

_KINDS = [IssuerInfo.decode, IssuerKeyRecord.decode, ExitTerms.decode]


def _run(data):
    if data:
        _KINDS[data[0] % len(_KINDS)](data[1:])


def _seeds():
    from meshvpn.fuzz.targets.paytokens import _issuer
    from meshvpn.payments.tokens import encodePublicKey

    return [
        b"\0" + IssuerInfo(EpochSchedule(3600, 1), 10_000, 1, "198.18.0.5:8080").encode(),
        b"\1" + IssuerKeyRecord(493333, encodePublicKey(_issuer()[1])).encode(),
        b"\2" + ExitTerms(1 << 20, 4096, 2**64 - 1).encode(),
    ]


TARGET = FuzzTarget("pay-records", "payments/records.py IssuerInfo / IssuerKeyRecord / ExitTerms decoders (DHT values)",
                    (PaymentRecordError, TokenFormatError), _run, _seeds)
