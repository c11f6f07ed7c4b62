"""Role settings: command line over TOML over defaults; every bad key or value is one clear line."""

import os

from twisted.trial import unittest

from meshvpn.config import parseHostPort
from meshvpn.roles import client, relay


def parse(options, argv):
    options.parseOptions(argv)
    return options.settings


class ConfigTests(unittest.TestCase):
    def writeToml(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self):
        s = parse(relay.Options(), [])
        self.assertEqual(s["udp"], ("0.0.0.0", 9000))
        self.assertEqual(s["listen"], "tcp:9001")
        self.assertTrue(s["data_dir"].endswith(os.path.join("meshvpn", "relay")))
        self.assertEqual(parse(client.Options(), [])["udp"], ("0.0.0.0", 0))

    def test_fileThenCommandLineWins(self):
        path = self.writeToml('udp = "127.0.0.1:7000"\nlisten = "tcp:7001:interface=127.0.0.1"\ndata-dir = "/tmp/x"\n')
        s = parse(relay.Options(), ["--config", path, "--udp", "[::1]:7002"])
        self.assertEqual(s["udp"], ("::1", 7002))
        self.assertEqual(s["listen"], "tcp:7001:interface=127.0.0.1")
        self.assertEqual(s["data_dir"], "/tmp/x")

    def assertConfigExit(self, argv, *fragments, options=relay.Options):
        e = self.assertRaises(SystemExit, options().parseOptions, argv)
        message = str(e.code)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("meshvpn-"), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_unknownKey(self):
        path = self.writeToml('udp = "127.0.0.1:7000"\nlistne = "tcp:1"\n')
        self.assertConfigExit(["--config", path], "unknown key 'listne'", "listen")

    def test_badValueInFile(self):
        path = self.writeToml("udp = 70000\n")
        self.assertConfigExit(["--config", path], "key 'udp'", "expected", "70000")

    def test_badValueOnCommandLine(self):
        self.assertConfigExit(["--udp", "localhost:80"], "--udp", "literal IP")
        self.assertConfigExit(["--listen", "nonsense:1:2"], "--listen", "endpoint")
        self.assertConfigExit(["--udp", "1.2.3.4:99999"], "--udp", options=client.Options)

    def test_badToml(self):
        path = self.writeToml("udp = \n")
        self.assertConfigExit(["--config", path], "not valid TOML", path)

    def test_tomlNotUTF8(self):
        """A config file with a byte that is not UTF-8 is one config error, not a traceback (found by fuzzing)."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'packs = "10,10\xd0\xdd"\n')
        self.assertConfigExit(["--config", path], "not valid TOML", "not UTF-8", path)

    def test_missingFile(self):
        self.assertConfigExit(["--config", "/nonexistent/meshvpn.toml"], "/nonexistent/meshvpn.toml")

    def test_wrongTypeInFile(self):
        path = self.writeToml('data-dir = 5\n')
        self.assertConfigExit(["--config", path], "key 'data-dir'", "string")

    def test_hostPortForms(self):
        self.assertEqual(parseHostPort("9000"), ("0.0.0.0", 9000))
        self.assertEqual(parseHostPort("[::]:1"), ("::", 1))
        self.assertEqual(parseHostPort(53), ("0.0.0.0", 53))
        for bad in ("", ":", "[::1]", "::1:5", "1.2.3.4:-1", "1.2.3.4:x", True):
            self.assertRaises(ValueError, parseHostPort, bad)

    def test_helpText(self):
        text = str(relay.Options())
        for fragment in ("--data-dir", "--udp", "--listen", "--config", "default:"):
            self.assertIn(fragment, text)


class MultipathSettingTests(unittest.TestCase):
    def test_bytesOrOff(self):
        from meshvpn.config import parseBytesOrOff

        self.assertEqual(parseBytesOrOff("1000000"), 1_000_000)
        self.assertEqual(parseBytesOrOff(0), 0)
        self.assertIsNone(parseBytesOrOff("off"))
        self.assertIsNone(parseBytesOrOff(None))
        for bad in ("-1", "lots", -5):
            self.assertRaises(ValueError, parseBytesOrOff, bad)

    def test_clientDefaultIsAuto(self):
        opts = client.Options()
        opts.parseOptions([])
        self.assertEqual(opts.settings["multipath_after"], "auto")
        for raw, want in (("off", None), ("1000000", 1_000_000), ("0", 0), ("AUTO", "auto")):
            opts = client.Options()
            opts.parseOptions(["--multipath-after", raw])
            self.assertEqual(opts.settings["multipath_after"], want)
        self.assertRaises(ValueError, client.parseMultipathAfter, "sometimes")
