"""Fuzz target: the link's AUTH record payload (link/auth.py verifyAuth), as a relay checks a peer's."""

from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget
from meshvpn.link import auth
from meshvpn.link.wire import LinkProtocolError

_EXPORTER = bytes(range(32))
_TRANSCRIPT = auth.transcriptHash(b"\x00\x01", b"\x00\x01")


def _run(data):
    auth.verifyAuth(data, auth.INITIATOR, _EXPORTER, _TRANSCRIPT)


def _seeds():
    return [auth.encodeAuth(realmsgs.identity(4), auth.INITIATOR, _EXPORTER, _TRANSCRIPT), auth.encodeAnonymousAuth()]


TARGET = FuzzTarget("link-auth", "link/auth.py verifyAuth (the AUTH record of a TLS link)", (LinkProtocolError,),
                    _run, _seeds)
