"""Exceptions shared across subsystems, named by the interfaces that raise them."""


class MeshVPNError(Exception):
    """Base of every MeshVPN error."""


class ConfigError(MeshVPNError):
    """A config key or value is wrong; the message names the key and what was expected."""


class KeyFileError(MeshVPNError):
    """A key file is unreadable, corrupt, or too permissive; the message names the file."""


class DHTError(MeshVPNError):
    """A DHT operation could not complete."""


class PunchFailed(MeshVPNError):
    """UDP hole punching found no working address pair before its deadline."""


class RelayError(MeshVPNError):
    """A TURN-style relay refused a request."""


class LinkError(MeshVPNError):
    """A link could not be opened or its peer is not who it should be."""


class LinkSilent(LinkError):
    """
    A link's peer did not answer a liveness PING in time: the process hangs
    (stopped, wedged) or the path to it is dead, though its connection is open.
    """


class EgressRefused(MeshVPNError):
    """A destination cannot be reached outside the VPN tunnel (no route there, or the gate is full)."""


class NoPath(MeshVPNError):
    """No suitable relays are known to build a circuit."""


class NoExitForTarget(NoPath):
    """Exits are known, but the policy of none of them accepts the target (SOCKS: not allowed by ruleset)."""


class StreamRefused(MeshVPNError):
    """The exit ended a stream; C{reason} holds the END reason."""

    def __init__(self, reason, message=""):
        super().__init__(message or f"stream refused: {reason}")
        self.reason = reason


class ResolveFailed(MeshVPNError):
    """
    DNS at the exit found no usable answer.  C{transient} says whether
    asking again later may work (a timeout, SERVFAIL) or not (NXDOMAIN, only
    private answers); it picks the RESOLVED error type sent back.
    """

    def __init__(self, name, transient, message="", refused=False):
        super().__init__(message or f"cannot resolve {name!r}")
        self.name = name
        self.transient = transient
        # True when answers existed but the exit policy refused them all
        # (a public name pointing at a private address).
        self.refused = refused


class ControlError(MeshVPNError):
    """
    A control request cannot be done (unknown circuit or relay, no VPN
    configured, ...); the message is the one line the user sees.  C{code}
    is the HTTP status the control API answers with.
    """

    def __init__(self, message, code=409):
        super().__init__(message)
        self.code = code
