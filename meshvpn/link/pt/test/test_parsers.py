"""Parsers of managed transports: launch lines, SMETHOD ARGS, SOCKS argument packing, bridge lines (hypothesis)."""

import sys

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from meshvpn.link.pt import messages as m
from meshvpn.link.pt.args import (BridgeLine, PTAddress, packSocksArgs, parseBridgeLine, parseBridgeLines,
                                  parsePTAddress, parseTransportLine, unpackSocksArgs)
from meshvpn.link.pt.messages import PTProtocolError, parseLine

keys = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs")), min_size=1, max_size=20)
values = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs")), max_size=40)
wordChars = st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="=")


class LaunchLineTests(unittest.TestCase):
    def test_examples(self):
        self.assertEqual(parseLine("VERSION 1"), m.Version("1"))
        self.assertEqual(parseLine("CMETHOD obfs4 socks5 127.0.0.1:4000"), m.ClientMethod("obfs4", "socks5", "127.0.0.1", 4000))
        self.assertEqual(
            parseLine("SMETHOD obfs4 [::]:443 ARGS:cert=a\\,b,iat-mode=0"),
            m.ServerMethod("obfs4", "::", 443, (("cert", "a,b"), ("iat-mode", "0"))),
        )
        self.assertEqual(parseLine("CMETHOD-ERROR obfs4 no keys here"), m.MethodError(False, "obfs4", "no keys here"))
        self.assertEqual(parseLine("SMETHODS DONE"), m.MethodsDone(True))
        self.assertEqual(parseLine("STATUS TRANSPORT=obfs4 CONNECT=Success"), m.Log("STATUS", "TRANSPORT=obfs4 CONNECT=Success"))
        self.assertEqual(parseLine("PROXY DONE"), m.Unknown("PROXY"))

    def test_malformed(self):
        for line, why in [
            ("VERSION", "one argument"),
            ("VERSION 1 2", "one argument"),
            ("CMETHOD obfs4 socks5", "NAME PROTOCOL ADDRESS"),
            ("CMETHOD obfs4 http 127.0.0.1:1", "socks4 or socks5"),
            ("CMETHOD obfs4 socks5 127.0.0.1:0", "out of range"),
            ("CMETHOD obfs4 socks5 example.com:80", "literal IP"),
            ("CMETHOD ob/fs4 socks5 127.0.0.1:1", "bad transport name"),
            ("SMETHOD obfs4", "NAME ADDRESS"),
            ("SMETHOD obfs4 1.2.3.4:5 ARGS:=x", "empty key"),
            ("SMETHOD obfs4 1.2.3.4:5 ARGS:a=b\\", "dangling backslash"),
            ("CMETHODS", "followed by DONE"),
            ("", "empty line"),
            ("VERSION \x00", "control characters"),
            ("LOG " + "x" * 5000, "longer than"),
        ]:
            e = self.assertRaises(PTProtocolError, parseLine, line)
            self.assertIn(why, str(e), line[:40])
            self.assertLess(len(str(e)), 300)  # quotes the line cut short

    @settings(deadline=None)  # timing is noisy on a shared machine
    @given(st.text(max_size=300))
    def test_anyTextParsesOrRaisesClearly(self, text):
        try:
            parseLine(text)
        except PTProtocolError as e:
            self.assertLess(len(str(e)), 300)

    @settings(deadline=None)  # timing is noisy on a shared machine
    @given(st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
    def test_anyBytesAsText(self, text):
        try:
            parseLine(text)
        except PTProtocolError:
            pass

    @settings(deadline=None)  # timing is noisy on a shared machine
    @given(st.lists(st.tuples(keys, values), min_size=1, max_size=5))
    def test_smethodArgsRoundTrip(self, pairs):
        def esc(s):
            return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")

        text = ",".join(f"{esc(k)}={esc(v)}" for k, v in pairs)
        self.assertEqual(m.parseServerArgs(text), tuple(pairs))


class SocksArgsTests(unittest.TestCase):
    def test_ptSpecShape(self):
        self.assertEqual(packSocksArgs((("shared-secret", "rahasia"), ("secrets-file", "/tmp/blob"))),
                         (b"shared-secret=rahasia;secrets-file=/tmp/blob", b"\0"))
        self.assertEqual(packSocksArgs((("a", "x;y=z\\"),)), (b"a=x\\;y\\=z\\\\", b"\0"))
        self.assertEqual(packSocksArgs(()), (None, None))

    def test_longSplitsAndTooLongRefused(self):
        user, password = packSocksArgs((("cert", "c" * 300),))
        self.assertEqual(len(user), 255)
        self.assertEqual(user + password, b"cert=" + b"c" * 300)
        e = self.assertRaises(ValueError, packSocksArgs, (("cert", "c" * 600),))
        self.assertIn("at most 510 bytes", str(e))

    @settings(deadline=None)  # timing is noisy on a shared machine
    @given(st.lists(st.tuples(keys, values), min_size=1, max_size=6))
    def test_roundTrip(self, pairs):
        try:
            user, password = packSocksArgs(tuple(pairs))
        except ValueError:
            return
        self.assertLessEqual(len(user), 255)
        self.assertLessEqual(len(password), 255)
        self.assertEqual(unpackSocksArgs(user, password), tuple(pairs))


NODE = "ab" * 32


class BridgeLineTests(unittest.TestCase):
    def test_torShape(self):
        line = f"obfs4 198.18.0.5:443 {NODE} cert=AbC+/9 iat-mode=0"
        bridge = parseBridgeLine(line)
        self.assertEqual(bridge, BridgeLine("obfs4", PTAddress("198.18.0.5", 443, (("cert", "AbC+/9"), ("iat-mode", "0"))),
                                            bytes.fromhex(NODE)))
        self.assertEqual(str(bridge), line)
        self.assertEqual(parseBridgeLine("Bridge " + line), bridge)  # pasted from a torrc
        self.assertEqual(str(bridge.address), "198.18.0.5:443 cert=AbC+/9 iat-mode=0")
        self.assertEqual(parsePTAddress(str(bridge.address)), bridge.address)
        self.assertEqual(len(parseBridgeLines([line, line.replace("443", "444")])), 2)

    def test_malformed(self):
        for line, why in [
            ("obfs4 198.18.0.5:443", "TRANSPORT HOST:PORT NODEID"),
            (f"obfs4 bridge.example:443 {NODE}", "literal IP"),
            (f"obfs4 198.18.0.5:443 {NODE[:-2]}", "64-hex-digit node id"),
            (f"obfs4 198.18.0.5:443 {NODE} cert", "KEY=VALUE"),
            (f"ob-fs4 198.18.0.5:443 {NODE}", "transport name"),
            (f"obfs4 198.18.0.5:0 {NODE}", "out of range"),
        ]:
            e = self.assertRaises(ValueError, parseBridgeLine, line)
            self.assertIn(why, str(e), line)

    @settings(deadline=None)  # timing is noisy on a shared machine
    @given(st.text(max_size=200))
    def test_anyTextParsesOrRaisesValueError(self, text):
        try:
            bridge = parseBridgeLine(text)
        except ValueError:
            return
        self.assertEqual(parseBridgeLine(str(bridge)), bridge)

    @settings(deadline=None)  # timing is noisy on a shared machine
    @given(st.lists(st.text(wordChars, min_size=1, max_size=8), max_size=4), st.lists(st.text(wordChars, max_size=8), max_size=4))
    def test_argsRoundTrip(self, ks, vs):
        args = tuple((k, v) for k, v in zip(ks, vs))
        address = PTAddress("198.18.0.1", 443, args)
        self.assertEqual(parsePTAddress(str(address)), address)


class TransportLineTests(unittest.TestCase):
    def test_parse(self):
        line = parseTransportLine(f"obfs4,meek_lite exec {sys.executable} -u x.py")
        self.assertEqual(line.names, ("obfs4", "meek_lite"))
        self.assertEqual(line.argv, ("-u", "x.py"))

    def test_malformed(self):
        for raw, why in [
            ("obfs4 /usr/bin/obfs4proxy", "exec"),
            ("obfs4 socks5 127.0.0.1:1", "exec"),
            ("obfs4 exec obfs4proxy", "absolute program path"),
            ("obfs4 exec /nonexistent/obfs4proxy", "not found or not executable"),
            (f"obfs4,obfs4 exec {sys.executable}", "each transport name once"),
            (f"obfs-4 exec {sys.executable}", "transport name"),
        ]:
            e = self.assertRaises(ValueError, parseTransportLine, raw)
            self.assertIn(why, str(e), raw)
