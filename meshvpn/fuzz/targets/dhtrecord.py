"""Fuzz target: a signed DHT record (dht/records.py parseRecord, verifyRecord) as a storing node or a reader checks it."""

from meshvpn.dht import records
from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget


def _run(data):
    record = records.parseRecord(data)
    records.verifyRecord(record, realmsgs.NOW)
    record.key


def _seeds():
    me = realmsgs.identity(13)
    return [
        records.makeRecord(me, b"relay", b"x" * 200, 7, realmsgs.NOW + 3600).raw,
        records.makeRecord(me, b"exits/issuer", b"", 1, realmsgs.NOW + 60, kind=records.SHARED).raw,
    ]


TARGET = FuzzTarget("dht-record", "dht/records.py parseRecord + verifyRecord (records stored and fetched)",
                    (records.RecordError,), _run, _seeds)
