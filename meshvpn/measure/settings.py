"""The one setting both ends of measurement share: how long an epoch is."""

from meshvpn.config import Setting
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
