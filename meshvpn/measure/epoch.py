"""Epochs: the clock every relay and client agrees on without talking.

Epoch e covers Unix time [e * length, (e + 1) * length).  Relays report an
epoch once it has ended; clients read the last epoch whose reports have had
time to arrive.  The default length is an hour (Tor's bandwidth files are
hourly); a test network shortens it.
"""

DEFAULT_LENGTH = 3600
PUBLISH_DELAY = 0.2  # fraction of an epoch a client waits for reports after it ended (the DHT stores take a while)


def epochOf(now, length):
    """The epoch Unix time C{now} falls in."""
    return int(now // length)


def nextBoundary(now, length):
    """Seconds from C{now} to the start of the next epoch (never zero)."""
    return (epochOf(now, length) + 1) * length - now or length


def lastComplete(now, length):
    """The last epoch whose reports should be published by C{now}."""
    return epochOf(now - length * PUBLISH_DELAY, length) - 1
