"""Why a stream ended: the END reasons carried in END cells.

Kept in its own tiny module so the onion layer (which puts them on the wire),
the exit (which decides them) and the SOCKS server (which turns them into
SOCKS replies) share one definition without importing each other.  The
numbers are Tor's (tor-spec, "Closing streams"), so logs and tests read the
same as Tor's.
"""

import enum


class EndReason(enum.IntEnum):
    MISC = 1  # catch-all
    RESOLVEFAILED = 2  # the exit could not resolve the name
    CONNECTREFUSED = 3  # the target refused the TCP connection
    EXITPOLICY = 4  # the exit's policy rejects the target
    DESTROY = 5  # the circuit is being torn down
    DONE = 6  # normal close
    TIMEOUT = 7  # connecting or resolving took too long
    NOROUTE = 8  # no route to the target's network or host
    HIBERNATING = 9  # the relay is out of bandwidth for now
    INTERNAL = 10  # a bug or local error at the relay
    RESOURCELIMIT = 11  # the relay has no resources (sockets, memory) left
    CONNRESET = 12  # the target reset the connection
    TORPROTOCOL = 13  # the peer broke the protocol
    NOTDIRECTORY = 14  # a directory request to a non-directory

    @classmethod
    def fromWire(cls, value):
        """
        @return: the reason for the byte C{value}; unknown values become
            L{MISC} (a newer peer may send reasons we do not know).
        """
        try:
            return cls(value)
        except ValueError:
            return cls.MISC
