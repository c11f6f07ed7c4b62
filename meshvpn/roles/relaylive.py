"""What a relay changes on SIGHUP: its exit policy and its bandwidth limits.

The exit policy object is shared by the stream exit, the resolver and the
packet exit, so a reload swaps its rules in place (one assignment: every
later decision uses the new rules, circuits already open keep their open
streams) and republishes the descriptor with the new summary, so clients
stop choosing the exit for ports it no longer serves.

Bandwidth limits change the node-wide buckets at once and the per-circuit
ones for circuits made from then on.  A relay started without any limit has
no read limiter to change, so turning limits on from nothing waits for a
restart (the reload says so).
"""

from meshvpn.exit.policy import defaultExitPolicy
from meshvpn.exit.settings import operatorRules
from meshvpn.roles.reload import Applier

POLICY_KEYS = frozenset({"exit_policy", "exit_reject_private"})  # exit-ipv6 changes the descriptor: a restart
RATE_KEYS = frozenset({"bandwidth_rate", "bandwidth_burst", "circuit_rate", "circuit_burst"})


def exitPolicyApplier(exitParts, publisher, ownAddresses, localAddresses):
    def apply(settings):
        fresh = defaultExitPolicy(operatorRules(settings), ownAddresses, rejectPrivate=settings["exit_reject_private"],
                                  localAddresses=localAddresses)
        exitParts.policy.rules = fresh.rules
        summary = exitParts.policy.summary()
        publisher.exitPolicy = summary
        publisher.publishNow()
        return f"exit policy now summarised as {summary!r} (descriptor republished)"

    return Applier(POLICY_KEYS, apply)


def rateApplier(exitLimiter, readLimiter):
    """
    @param exitLimiter: the exit's L{meshvpn.ratelimit.BandwidthLimiter} or C{None}.
    @param readLimiter: the switch's link read limiter or C{None}.
    """

    def apply(settings):
        if readLimiter is None and (settings["bandwidth_rate"] or settings["circuit_rate"]):
            raise ValueError("this relay started without bandwidth limits: restart it to add them")
        rate, burst = settings["bandwidth_rate"], settings["bandwidth_burst"]
        circuitRate, circuitBurst = settings["circuit_rate"], settings["circuit_burst"]
        for limiter in (exitLimiter, readLimiter):
            if limiter is None:
                continue
            bucket = limiter.nodeBucket if hasattr(limiter, "nodeBucket") else limiter.bucket
            bucket.reconfigure(rate, burst)
            limiter.circuitRate, limiter.circuitBurst = circuitRate, circuitBurst
        return f"bandwidth {rate or 'unlimited'} B/s (burst {burst or 'default'}), per circuit {circuitRate or 'unlimited'}"

    return Applier(RATE_KEYS, apply)
