"""The path of a multipath set's second leg: a guard and middle of its own, the first leg's exit.

A second leg through the same guard or middle would share the first leg's
bottleneck (and hand one relay both legs); through a relay related to the
first leg's guard or middle (same /16, declared family) it would hand one
operator both.  So the second leg's guard and middle must be unrelated to
every relay of the first path except the exit they share, and to each other
and the exit, by the same rules as L{meshvpn.circuits.pathselect}.  When no
such relays are known the set stays single-path (L{NoPath}).
"""

import random

from meshvpn.circuits.pathselect import related
from meshvpn.errors import NoPath


def chooseSecondLeg(relays, first, guard=None, rng=None):
    """
    @param relays: L{meshvpn.circuits.pathselect.RelayInfo}s known from the directory.
    @param first: the first leg's path C{[guard, middle, exit]}.
    @param guard: the second leg's guard from the client's guard set
        (chosen with the first path excluded), or C{None} to pick one.
    @return: C{[guard, middle, exit]} with C{exit} the first leg's.
    @raise NoPath: no guard or middle fits.
    """
    rng = rng or random.SystemRandom()
    exit = first[-1]
    avoid = list(first[:-1])

    def fits(relay, chosen):
        return relay.placeable and not any(related(relay, other) for other in chosen)

    chosen = [exit, *avoid]
    if guard is None:
        guards = [r for r in relays if "guard" in r.roles and fits(r, chosen)]
        if not guards:
            raise NoPath("no second guard unrelated to the first leg's path")
        guard = rng.choice(guards)
    elif not fits(guard, chosen):
        raise NoPath("the second guard shares a network or family with the first leg's path")
    chosen.append(guard)
    middles = [r for r in relays if "middle" in r.roles and fits(r, chosen)]
    if not middles:
        raise NoPath("no second middle unrelated to both guards and the exit")
    return [guard, rng.choice(middles), exit]
