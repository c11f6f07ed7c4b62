"""Circuit protocol versions: which relay commands a hop understands, learned from its descriptor.

A link negotiates the circuit version its two ends share (the VERSIONS
record, L{meshvpn.link.protocol}), but a client links only to its guard:
the middle and the exit it learns of from their descriptors.  A relay
lists C{circuit-N} there for every circuit version N > 1 it speaks (none
listed: version 1 only, as every earlier release); L{hopVersion} reads it.

L{COMMAND_SINCE} names the version that introduced each relay command
newer than version 1.  The origin refuses to send such a command to a hop
whose version is older (L{CircuitVersionTooOld}): an older hop would take
it for an unknown command and tear the circuit down, so the caller falls
back instead (another exit, or the older way).  Every command of this
release is version 1; the next release that adds one lists it here and
adds its version to L{meshvpn.link.protocol.CIRCUIT_VERSIONS}.  Version 2
added no command but a flow flag (optimistic data,
L{meshvpn.onion.flow.FLAG_SINCE}), proposed only to last hops that list it;
version 3 likewise (packet mode's offload records, C{FLOW_GSO}).
"""

from meshvpn.errors import MeshVPNError

PREFIX = "circuit-"
MAX_VERSION = 0x7FFF  # as the VERSIONS record carries them

# relay command -> the circuit version that introduced it (absent: 1)
COMMAND_SINCE = {}


class CircuitVersionTooOld(MeshVPNError):
    """A relay command was not sent: the hop's circuit version predates it."""


def descriptorNames(versions):
    """The names a relay speaking circuit C{versions} lists in its descriptor (C{()} for version 1 only)."""
    return tuple(f"{PREFIX}{v}" for v in sorted(set(versions)) if v > 1)


def hopVersion(names):
    """
    The highest circuit version a descriptor's names list (1 if none; a
    malformed C{circuit-*} name is ignored, as any unknown name is).
    """
    best = 1
    for name in names or ():
        if name.startswith(PREFIX):
            digits = name[len(PREFIX):]
            if digits.isdigit() and len(digits) <= 5 and 1 < int(digits) <= MAX_VERSION:
                best = max(best, int(digits))
    return best


def checkCommand(command, version):
    """@raise CircuitVersionTooOld: C{command} is newer than circuit C{version}."""
    since = COMMAND_SINCE.get(command)
    if since is not None and version < since:
        raise CircuitVersionTooOld(f"relay command {command} needs circuit version {since}; the hop speaks {version}")
