"""What contrib/ ships for operators: the systemd units verify and score, the example configs load.

C{systemd-analyze verify} checks that every command a unit runs exists; the
units name the packaged paths (/usr/bin/twistd, /usr/bin/meshvpn), so the
test checks a copy in which only those two paths point at this checkout's
venv.  C{systemd-analyze security --offline} scores the exposure each unit
leaves; the test keeps it where the units put it, so a hardening line
removed by mistake fails here.
"""

import os
import re
import shutil
import subprocess
import sys

from twisted.trial import unittest

import meshvpn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(meshvpn.__file__)))
CONTRIB = os.path.join(REPO, "contrib")
UNITS = {"meshvpn-relay@.service": "meshvpn-relay@main.service", "meshvpn-client.service": "meshvpn-client.service"}
# Exposure as systemd 252 scores it (0 best, 10 worst; "OK" is below 5).
MAX_EXPOSURE = {"meshvpn-relay@main.service": 1.5, "meshvpn-client.service": 2.6}


def analyze():
    found = shutil.which("systemd-analyze")
    if found is None:
        raise unittest.SkipTest("systemd-analyze is not installed here (apt-get install systemd)")
    return found


def unitText(name):
    with open(os.path.join(CONTRIB, "systemd", name)) as f:
        return f.read()


class UnitTests(unittest.TestCase):
    def localUnits(self):
        """The units with /usr/bin/{twistd,meshvpn} pointing at this venv, instance 'main' named."""
        where = os.path.abspath(self.mktemp())
        os.makedirs(where)
        binDir = os.path.dirname(sys.executable)
        paths = []
        for template, instance in UNITS.items():
            text = unitText(template)
            text = text.replace("/usr/bin/twistd", os.path.join(binDir, "twistd"))
            text = text.replace("/usr/bin/meshvpn", os.path.join(binDir, "meshvpn"))
            with open(os.path.join(where, template), "w") as f:
                f.write(text)
            if template != instance:
                os.symlink(template, os.path.join(where, instance))
            paths.append(os.path.join(where, instance))
        return paths

    def test_verify(self):
        tool = analyze()
        out = subprocess.run([tool, "verify", *self.localUnits()], capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual(out.stderr.strip(), "")

    def test_securityScore(self):
        tool = analyze()
        for path in self.localUnits():
            out = subprocess.run([tool, "security", "--offline=yes", "--no-pager", path],
                                 capture_output=True, text=True, timeout=120)
            found = re.search(r"Overall exposure level for (\S+): ([\d.]+) (\w+)", out.stdout)
            self.assertIsNotNone(found, out.stdout + out.stderr)
            unit, score = found.group(1), float(found.group(2))
            print(f"\nsystemd-analyze security {unit}: {score} {found.group(3)}")
            self.assertLessEqual(score, MAX_EXPOSURE[unit], out.stdout)

    def test_relayHoldsNoCapability(self):
        text = unitText("meshvpn-relay@.service")
        self.assertRegex(text, r"(?m)^CapabilityBoundingSet=$")
        self.assertRegex(text, r"(?m)^DynamicUser=yes$")
        for line in ("ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes", "Type=notify",
                     "SystemCallFilter=@system-service", "ExecReload=/bin/kill -HUP $MAINPID"):
            self.assertIn(f"\n{line}\n", text)

    def test_clientHoldsOnlyNetAdmin(self):
        text = unitText("meshvpn-client.service")
        self.assertRegex(text, r"(?m)^CapabilityBoundingSet=CAP_NET_ADMIN$")
        self.assertRegex(text, r"(?m)^DeviceAllow=/dev/net/tun rw$")
        self.assertIn("ExecStopPost=/usr/bin/meshvpn vpn-restore", text)
        for line in ("ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes", "Type=notify"):
            self.assertIn(f"\n{line}\n", text)


class ExampleConfigTests(unittest.TestCase):
    def load(self, role):
        from importlib import import_module

        options = import_module(f"meshvpn.roles.{role}").Options()
        options.parseOptions(["--config", os.path.join(CONTRIB, "config", f"{role}.toml"),
                              "--data-dir", os.path.abspath(self.mktemp())])
        return options

    def test_relayConfigLoadsAndBuilds(self):
        from meshvpn.roles import relay

        options = self.load("relay")
        self.assertEqual(options.settings["udp"], ("0.0.0.0", 9000))
        self.assertEqual(options.settings["exit_policy"], "accept *:80, accept *:443, reject *:*")
        node = relay.makeService(options)
        self.assertIsNotNone(node.getServiceNamed("reload"))
        self.assertIsNotNone(node.getServiceNamed("systemd"))

    def test_clientConfigLoads(self):
        options = self.load("client")
        self.assertEqual(options.settings["socks_listen"], ("127.0.0.1", 1080))
        self.assertFalse(options.settings["tun"])

    def test_twistdAcceptsThemAsTheyAre(self):
        from meshvpn.tools.processes import twistdPath

        for role in ("relay", "client"):
            out = subprocess.run([twistdPath(), f"meshvpn-{role}", "--config",
                                  os.path.join(CONTRIB, "config", f"{role}.toml"), "--help"],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)

    def test_everySettingNamedInTheExample(self):
        """A setting added to a role's schema is explained in its example too (set or commented)."""
        from importlib import import_module

        for role in ("relay", "client"):
            with open(os.path.join(CONTRIB, "config", f"{role}.toml")) as f:
                text = f.read()
            schema = import_module(f"meshvpn.roles.{role}").Options.schema
            missing = [s.name for s in schema if not re.search(rf"(?m)^#? ?{re.escape(s.name)} =", text)]
            self.assertEqual(missing, [], f"{role}.toml does not mention {missing}")
