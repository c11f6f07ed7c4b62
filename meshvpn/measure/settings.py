"""Measurement settings: how long an epoch is (every node), how long a relay's capacity probes run (relays), whether a client caps weights by probes.

Probes are off by default on both sides: on a loaded network busy measurers
read their targets low and the weights were misranked (doc/measurement.md),
and a client that applied probes while few relays ran them would let those
few be every target's measurers.  A network turns them on together.
"""

from meshvpn.config import Setting, parseBool
from meshvpn.measure.epoch import DEFAULT_LENGTH
from meshvpn.measure.reports import MAX_EPOCH_LENGTH


def parseEpoch(raw):
    try:
        value = int(float(raw))
    except (TypeError, ValueError):
        value = 0
    # a record lives three epochs and the DHT keeps none longer than a day
    if not 5 <= value <= min(MAX_EPOCH_LENGTH, 8 * 3600):
        raise ValueError("whole seconds between 5 and 28800")
    return value


def measureSettings():
    return [
        Setting("measure-epoch", parseEpoch, DEFAULT_LENGTH,
                "Seconds per bandwidth-measurement epoch (relays report, clients weigh, per epoch; "
                "every node of a network must agree)."),
    ]


DEFAULT_PROBE_SECONDS = 0


def parseProbeSeconds(raw):
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if not (value == 0 or 1 <= value <= 600):
        raise ValueError("seconds between 1 and 600, or 0 (no probes)")
    return value


def probeSettings():
    return [
        Setting("probe-seconds", parseProbeSeconds, DEFAULT_PROBE_SECONDS,
                "Seconds a relay's capacity probes run in each epoch's probe slot, as measurer and as target "
                "(every relay of a network should agree; capped to 65% of the epoch); 0: this relay neither "
                "probes nor echoes."),
    ]


def probeWeightSettings():
    return [
        Setting("probe-weights", parseBool, False,
                "Cap relay weights by the relays' published capacity probes (only when the network's relays "
                "run --probe-seconds; off: probe reports are not read).  Weights of epochs before the version "
                "deadline (2027-03-01 UTC, doc/measurement.md) are not capped: the probes are only read and shown."),
    ]
