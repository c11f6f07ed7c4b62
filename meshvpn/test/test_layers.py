"""The planes import only downward, and shipped code never imports tests.

The one place that lists the planes and their order (doc/architecture.md
explains them).  A module may import modules of its own package and of any
plane *below* its own; planes of equal rank (dht/nat, streams/tun,
client/exit) are siblings and never import each other.  Imports are read
with C{ast}, whether at module level or inside a function, so a lazy import
cannot hide an arrow.
"""

import ast
import os

from twisted.trial import unittest

import meshvpn

# The ground: top-level modules every plane may use.
GROUND = {"interfaces", "identity", "errors", "secretfile", "ratelimit", "config", "udpmux", "ports", "hostport",
          "hybridkem", "observer", "localaddrs", "sdnotify", "logoutput", "readsize", "socketpush"}

# Plane -> rank.  Lower ranks never import higher ones.
PLANES = {
    "ground": 0,
    "dht": 1, "nat": 1,  # discovery, connectivity
    "link": 2, "measure": 2,  # measure: peer traffic reports and weights (uses the DHT; reached by interface)
    "onion": 3,
    "circuits": 4,
    "streams": 5, "tun": 5,
    "payments": 5,  # tokens, issuer, Monero RPC: used by the client and the exit, uses no edge
    "client": 6, "exit": 6,  # the edges
    "control": 7,
    "roles": 8,
    "tools": 9,  # testnet, processes, benchmarks, fixtures
    "fuzz": 9,  # atheris harnesses of every parser (reaches into every plane, nothing imports it but the command)
    "cli": 10, "__main__": 11,  # the `meshvpn` command
}

# Arrows that break the rule today, each with the reason it is still here.
# Empty is the goal; a test below fails if an entry is no longer needed.
PENDING = set()

ROOT = os.path.dirname(meshvpn.__file__)


def planeOf(module):
    """C{meshvpn.a.b} -> the plane name of C{a} (ground for top-level ground modules)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "ground"
    head = parts[1]
    if len(parts) == 2 and head in GROUND:
        return "ground"
    if head == "test":  # meshvpn.test: tests of the ground and of the whole
        return "test"
    return head


def isTest(module):
    return ".test." in module + "." and module.split(".")[-1] != "meshvpn"


def shippedModules():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d != "test" and not d.startswith((".", "__"))]
        for name in filenames:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), os.path.dirname(ROOT))
                module = rel[:-3].replace(os.sep, ".")
                if module.endswith(".__init__"):
                    module = module[: -len(".__init__")]
                yield module, os.path.join(dirpath, name)


def importsOf(path, module):
    """Every C{meshvpn...} module C{path} imports (C{from pkg import mod} counts as C{pkg.mod})."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "meshvpn")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "meshvpn":
                continue
            for a in node.names:
                candidate = f"{base}.{a.name}"
                out.add(candidate if _isModule(candidate) else base)
    return out


def _isModule(dotted):
    path = os.path.join(os.path.dirname(ROOT), *dotted.split("."))
    return os.path.exists(path + ".py") or os.path.isdir(path)


def violations():
    """@return: C{(importer, imported, why)} for every arrow against the rule."""
    bad = []
    for module, path in shippedModules():
        mine = planeOf(module)
        if mine not in PLANES:
            bad.append((module, "", f"plane {mine!r} is not in PLANES"))
            continue
        for target in sorted(importsOf(path, module)):
            if isTest(target) or planeOf(target) == "test":
                bad.append((module, target, "shipped code imports a test module"))
                continue
            theirs = planeOf(target)
            if theirs == mine or target == "meshvpn":
                continue
            if theirs not in PLANES:
                bad.append((module, target, f"plane {theirs!r} is not in PLANES"))
            elif PLANES[theirs] >= PLANES[mine]:
                how = "a sibling plane" if PLANES[theirs] == PLANES[mine] else "upward"
                bad.append((module, target, f"{mine} imports {how} ({theirs})"))
    return bad


class LayerRuleTests(unittest.TestCase):
    def test_onlyDownward(self):
        bad = [v for v in violations() if (v[0], v[1]) not in PENDING]
        self.assertEqual(bad, [], "\n".join(f"{a} -> {b}: {why}" for a, b, why in bad))

    def test_pendingStillNeeded(self):
        live = {(a, b) for a, b, _ in violations()}
        self.assertEqual(PENDING - live, set(), "remove these from PENDING: they no longer happen")

    def test_detectsUpwardAndTestImports(self):
        """The checker itself: it sees an upward arrow, a lazy one, and a test import."""
        src = "import meshvpn.roles.node\ndef f():\n    from meshvpn.client import socks\nfrom meshvpn.test import x\n"
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(src)
        found = importsOf(path, "meshvpn.link.fake")
        self.assertIn("meshvpn.roles.node", found)
        self.assertIn("meshvpn.client.socks", found)
        self.assertTrue(any(isTest(m) or planeOf(m) == "test" for m in found))
        self.assertGreater(PLANES[planeOf("meshvpn.roles.node")], PLANES[planeOf("meshvpn.link.fake")])
