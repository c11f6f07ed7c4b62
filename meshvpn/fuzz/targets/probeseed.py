"""Fuzz target: a relay's signed seed record (measure/probeseed.py, "MVS1"), as relays and clients read it from the DHT.

The parser must refuse anything but the one encoding: what it accepts is
exactly the bytes it was given, of the one size, with a secret, a
commitment and a used seed (or none) of the right lengths.
"""

from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.measure.probeseed import SIZE, SeedRecordError, parseSeedRecord, signSeedRecord


def _run(data):
    record = parseSeedRecord(data)
    if record.raw != bytes(data) or len(record.raw) != SIZE:
        raise AssertionError("an accepted seed record is not the bytes it came in")
    if len(record.secret) != 32 or len(record.commitment) != 32 or len(record.usedSeed) not in (0, 32):
        raise AssertionError("a field of an accepted seed record has the wrong length")


def _seeds():
    me = realmsgs.identity(31)
    return [
        signSeedRecord(me, 493333, 3600, bytes(range(32)), bytes(32), bytes([7]) * 32).raw,
        signSeedRecord(me, 0, 1, bytes(32), bytes([255]) * 32).raw,
    ]


TARGET = FuzzTarget("probe-seed",
                    "measure/probeseed.py parseSeedRecord (MVS1: a relay's commit and reveal, from the DHT)",
                    (SeedRecordError,), _run, _seeds)
