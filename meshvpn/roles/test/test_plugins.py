"""The roles are real twistd plugins: found from the installed package, light to list, packaged right."""

import glob
import os
import subprocess
import sys
import zipfile

from twisted.application.service import IService, IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial import unittest

import meshvpn
from meshvpn.tools.processes import twistdPath

REPO = os.path.dirname(os.path.dirname(os.path.abspath(meshvpn.__file__)))
ROLES = {"meshvpn-relay", "meshvpn-client", "meshvpn-issuer"}


def cleanEnv():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


class PluginTests(unittest.TestCase):
    def test_inProcessDiscovery(self):
        found = {p.tapname: p for p in getPlugins(IServiceMaker) if p.tapname.startswith("meshvpn-")}
        self.assertEqual(set(found), ROLES)
        for maker in found.values():
            self.assertTrue(callable(maker.makeService))
            self.assertIn("--data-dir", str(maker.options()))

    def test_twistdHelpListsRoles(self):
        """The venv's own twistd, run from elsewhere, lists both roles."""
        elsewhere = self.mktemp()
        os.makedirs(elsewhere)
        out = subprocess.run(
            [twistdPath(), "--help"], cwd=elsewhere, capture_output=True, text=True, env=cleanEnv(), timeout=60
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        for role in ROLES:
            self.assertIn(role, out.stdout)

    def test_dropinsStayLight(self):
        """Listing plugins must not import the roles (twistd --help stays fast)."""
        code = (
            "import sys; from twisted.plugin import getPlugins; from twisted.application.service import IServiceMaker;"
            "names=[p.tapname for p in getPlugins(IServiceMaker)];"
            "print('meshvpn-relay' in names, 'meshvpn.roles.relay' in sys.modules, 'meshvpn.roles.node' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=cleanEnv(), timeout=60)
        self.assertEqual(out.stdout.split(), ["True", "False", "False"], out.stderr)

    def test_wheelCarriesDropins(self):
        """A built wheel ships twisted/plugins/meshvpn_*.py without any twisted/plugins/__init__.py."""
        wheels = os.path.abspath(self.mktemp())
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, REPO],
            capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(build.returncode, 0, build.stderr[-2000:])
        [wheel] = glob.glob(os.path.join(wheels, "meshvpn-*.whl"))
        names = set(zipfile.ZipFile(wheel).namelist())
        self.assertIn("twisted/plugins/meshvpn_relay.py", names)
        self.assertIn("twisted/plugins/meshvpn_client.py", names)
        self.assertIn("meshvpn/roles/relay.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)


class MakeServiceTests(unittest.TestCase):
    """makeService tested directly, as magic-wormhole-transit-relay does."""

    def test_relayMakeService(self):
        from meshvpn.roles import relay

        options = relay.Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--udp", "127.0.0.1:0", "--listen", "tcp:0:interface=127.0.0.1"])
        node = relay.makeService(options)
        self.assertTrue(IService.providedBy(node))
        self.assertEqual(node.role, "relay")
        self.assertIsNotNone(node.streamListener)
        self.assertEqual(len(node.identity.nodeId), 32)

    def test_clientMakeService(self):
        from meshvpn.roles import client

        options = client.Options()
        options.parseOptions(["--data-dir", self.mktemp()])
        node = client.makeService(options)
        self.assertIsNone(node.streamListener)
        self.assertEqual(node.settings["udp"], ("0.0.0.0", 0))

    def test_corruptKeyStopsWithOneLine(self):
        from meshvpn.roles import relay

        dataDir = self.mktemp()
        os.makedirs(dataDir, mode=0o700)
        path = os.path.join(dataDir, "identity.key")
        with open(path, "w") as f:
            f.write("garbage\n")
        os.chmod(path, 0o600)
        options = relay.Options()
        options.parseOptions(["--data-dir", dataDir])
        e = self.assertRaises(SystemExit, relay.makeService, options)
        self.assertIn(path, str(e.code))
        self.assertNotIn("\n", str(e.code))
