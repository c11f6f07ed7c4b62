"""Stream relay message bodies (meshvpn.onion.streammsgs): round trips, clear errors, hostile bytes."""

import ipaddress

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.onion import cells
from meshvpn.onion import streammsgs as S
from meshvpn.onion.endreasons import EndReason


def _oldBeginAccepts(body):
    """The hand-written BEGIN target rules the stream layer had before hostport.py (the oracle)."""
    target, nul, _ = body.partition(b"\x00")
    if not nul:
        return False
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        return False
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
    return 0 < len(host) <= 255 and all(c in allowed for c in host)


_hostParts = st.sampled_from(["example", "org", "a-b", "x_y", "198", "18", "0", "::1", "2001:db8::7", "[", "]",
                              ":", ".", " ", "\x00", "é", "", "[::1]", "[2001:db8::1]", "[x]"])
_ports = st.one_of(st.integers(0, 70000).map(str), st.sampled_from(["", "x", "-1", "8o", "+80", "٣"]))


class RoundTrips(unittest.TestCase):
    def test_bodies(self):
        for body in [S.Begin("example.com", 443, 1), S.Begin("2001:db8::2", 80), S.Begin("198.18.0.1", 1),
                     S.End(EndReason.DONE), S.End(99), S.Connected(), S.Connected("198.18.0.7", 300),
                     S.Connected("2001:db8::7", 60), S.Resolve("example.com"), S.Resolve("1.0.18.198.in-addr.arpa"),
                     S.Resolved(((S.AnswerType.IPV4, bytes(4), 60), (S.AnswerType.HOSTNAME, b"a.b", 5)))]:
            self.assertEqual(type(body).decode(body.encode()), body)
            self.assertIs(S.STREAM_BODY_TYPES[{S.Begin: 1, S.End: 3, S.Connected: 4, S.Resolve: 11,
                                               S.Resolved: 12}[type(body)]], type(body))

    def test_ipv6BeginIsBracketed(self):
        self.assertEqual(S.Begin("::1", 80).encode(), b"[::1]:80\x00\x00\x00\x00\x00")

    def test_endReasons(self):
        self.assertEqual(S.End.decode(b"").reason, EndReason.MISC)  # an empty END, as Tor reads it
        self.assertEqual(S.End.decode(b"\xee").reason, EndReason.MISC)  # a reason we do not know
        self.assertIs(S.End.decode(b"\x06").reason, EndReason.DONE)

    def test_resolvedFitsOneCell(self):
        answers = [(S.AnswerType.IPV6, bytes(16), 60)] * 30
        self.assertRaises(cells.CellError, S.Resolved(answers).encode)
        fitting = S.Resolved.fitting(answers)
        self.assertLessEqual(len(fitting.encode()), cells.RELAY_DATA_LEN)
        self.assertEqual(fitting.answers, tuple(answers[: cells.RELAY_DATA_LEN // 22]))

    def test_stubbornNamesRefused(self):
        self.assertRaises(cells.CellError, S.Resolve("bad name").encode)
        self.assertRaises(cells.CellError, S.Begin("exämple.com", 80).encode)
        for bad in (b"example.com:80", b"ex ample.com:80\x00", b"[nope]:80\x00", b"::1:80\x00", b"a.b:0\x00",
                    b"a.b:65536\x00", b":80\x00"):
            self.assertRaises(cells.CellError, S.Begin.decode, bad)

    def test_errorsSayWhat(self):
        e = self.assertRaises(cells.CellError, S.Begin.decode, b"x" * 300 + b":80\x00")
        self.assertIn("not a hostname or address", str(e))
        e = self.assertRaises(cells.CellError, S.Begin.decode, b"example.com:http\x00")
        self.assertIn("HOST:PORT", str(e))

    def test_cellsForwardsMovedNames(self):
        # Older importers of these names from cells get the one definition.
        self.assertIs(cells.End, S.End)
        self.assertIs(cells.Begin, S.Begin)
        self.assertRaises(AttributeError, getattr, cells, "NoSuchThing")


class Hostile(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(sorted(S.STREAM_BODY_TYPES.values(), key=lambda t: t.__name__)),
           st.binary(max_size=cells.RELAY_DATA_LEN))
    def test_decodersRaiseCellErrorOnly(self, kind, data):
        try:
            body = kind.decode(data)
        except cells.CellError:
            return
        # Whatever decodes encodes again into something that decodes the same.
        self.assertEqual(kind.decode(body.encode()), body)

    @settings(max_examples=500, deadline=None)
    @given(st.lists(_hostParts, max_size=5).map("".join), _ports, st.binary(max_size=6))
    def test_beginAcceptsWhatItAlwaysAccepted(self, host, port, flags):
        body = f"{host}:{port}".encode("utf-8") + b"\x00" + flags
        try:
            S.Begin.decode(body)
            accepted = True
        except cells.CellError:
            accepted = False
        self.assertEqual(accepted, _oldBeginAccepts(body), body)

    @given(st.binary(max_size=300))
    def test_resolvedParser(self, body):
        try:
            answers = S.Resolved.decode(body)
        except cells.CellError:
            return
        self.assertEqual(answers.encode(), body)
