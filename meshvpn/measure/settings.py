"""Measurement settings: how long an epoch is (every node), how long a relay's capacity probes run (relays), whether a client caps weights by probes.

Probes are on by default on both sides, together: a client that applied
probes while few relays ran them would let those few be every target's
measurers, and relays that probed while clients ignored them would spend
their slot for nothing.  A relay's default slot, C{auto}, scales with the
epoch (L{probeSecondsFor}), so every relay of a network, which must agree
on the epoch, agrees on the slot too.
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


AUTO = "auto"
DEFAULT_PROBE_SECONDS = AUTO
# auto: this fraction of the epoch, within [AUTO_MIN, AUTO_MAX] seconds.  An hourly epoch gets the
# 20 s the model and the costs were measured at (1.1% of the network's capacity an epoch, both roles);
# a test network's 20 s epoch gets 2 s, 10% of it, not the 65% a fixed 20 s would be capped to.
# Below 2 s the bucket's burst (a second of its rate) would be most of what a throttled relay shows.
AUTO_FRACTION = 1 / 180
AUTO_MIN = 2.0
AUTO_MAX = 20.0


def parseProbeSeconds(raw):
    if isinstance(raw, str) and raw.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(raw) if not isinstance(raw, bool) else -1.0
    except (TypeError, ValueError):
        value = -1.0
    if not (value == 0 or 1 <= value <= 600):
        raise ValueError("auto, seconds between 1 and 600, or 0 (no probes)")
    return value


def probeSecondsFor(setting, epochLength):
    """The seconds a relay probes in each slot: C{setting} itself, or for C{auto} a share of C{epochLength}."""
    if setting == AUTO:
        return min(AUTO_MAX, max(AUTO_MIN, epochLength * AUTO_FRACTION))
    return float(setting)


def probeSettings():
    return [
        Setting("probe-seconds", parseProbeSeconds, DEFAULT_PROBE_SECONDS,
                "Seconds a relay's capacity probes run in each epoch's probe slot, as measurer and as target "
                "(every relay of a network should agree; capped to 65% of the epoch); auto (default): the "
                "epoch / 180 within 2 to 20 s (20 s at hourly epochs); 0: this relay neither probes nor echoes."),
    ]


def probeWeightSettings():
    return [
        Setting("probe-weights", parseBool, True,
                "Cap relay weights by the relays' published capacity probes (default true, as the network's "
                "relays probe by default; false: probe reports are not read, and this client's weights differ "
                "from the network's).  Weights of epochs before the version deadline (2026-11-30 UTC, "
                "doc/measurement.md) are not capped: the probes are only read and shown."),
    ]
