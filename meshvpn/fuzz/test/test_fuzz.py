"""The fuzz targets: every one loads, replays its checked-in inputs, and survives a short atheris run."""

import io
import json
import os
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial import unittest

from meshvpn import cli
from meshvpn.fuzz import corpora, registry, replay, runner

SHORT_RUN_S = 2


class TargetsTests(unittest.TestCase):
    def test_everyTargetLoads(self):
        """Each registered target is a FuzzTarget with its own name, declared errors and real seeds on disk."""
        for name in registry.names():
            target = registry.load(name)
            self.assertEqual(target.name, name)
            for error in target.errors:
                self.assertTrue(issubclass(error, Exception), name)
            self.assertTrue(corpora.inputs(name), f"{name} has no checked-in seeds")

    def test_everyRelayBodyIsFuzzed(self):
        """Every relay command with a body codec in the protocol's tables is in the relay-body target."""
        from meshvpn.fuzz.targets.relaybody import BODY_TYPES
        from meshvpn.onion.cells import RELAY_BODY_TYPES
        from meshvpn.onion.streammsgs import STREAM_BODY_TYPES

        self.assertLessEqual(set(RELAY_BODY_TYPES) | set(STREAM_BODY_TYPES), set(BODY_TYPES))

    def test_everyMultipathCommandIsFuzzed(self):
        """MP_LINK..MP_REFUSED: the bodies with a codec in relay-body, every one in the multipath target; FRAGMENT too."""
        from meshvpn.fuzz.targets import multipath, relaybody
        from meshvpn.onion.cells import RelayCommand

        withBody = {RelayCommand.MP_LINK, RelayCommand.MP_LINKED, RelayCommand.MP_SWITCH, RelayCommand.MP_ACK}
        self.assertLessEqual(withBody, set(relaybody.BODY_TYPES))
        self.assertEqual(set(multipath._COMMANDS), set(RelayCommand.MULTIPATH))
        self.assertIn(RelayCommand.FRAGMENT, relaybody._ORDER)

    def test_unknownTarget(self):
        self.assertRaises(registry.UnknownTarget, registry.load, "no-such-parser")

    def test_replayCorpusAndRegressions(self):
        """Every seed and every input that once crashed a parser only ever meets the declared error."""
        for name in registry.names():
            result = replay.replay(name)
            self.assertEqual(result["inputs"], result["accepted"] + result["rejected"])

    def test_seedsAreAccepted(self):
        """Real messages parse: a harness that rejected its own seeds would fuzz nothing useful."""
        accepted = {name: registry.load(name) for name in registry.names()}
        # handshakes sealed with ephemeral keys of another run cannot verify
        unverifiable = {"datagram-handshake"}
        for name, target in accepted.items():
            if name in unverifiable:
                continue
            for data in target.seeds():
                self.assertTrue(target.check(data), f"{name} rejects its own seed {data[:40]!r}")


class RunnerTests(unittest.TestCase):
    def test_shortRunOfEveryTarget(self):
        """Every target runs under atheris for a few seconds without a crash, a hang or an OOM.

        A fixed seed keeps the suite repeatable: finding new crashes is the
        job of longer ``meshvpn fuzz`` runs, whose finds land in regressions/.
        """
        results = runner.runAll(registry.names(), SHORT_RUN_S, parallel=2, extra=["-seed=1"])
        for r in results:
            self.assertIsNone(r["crash"], f"{r['target']}: {r['crash']}")
            self.assertEqual(r["exit_code"], 0, r["target"])
            self.assertGreater(r["executions"], 0, r["target"])

    def test_crashIsReported(self):
        """A planted bug is found, reported with its traceback, and its input kept."""
        keep = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, keep, ignore_errors=True)
        run = runner.Run("meshvpn.fuzz.test.crashing:TARGET", 30, extra=["-seed=1"])
        # the seed corpus of a test target is not on disk: hand it the near miss
        result = run.wait(keepArtifacts=keep)
        self.assertIsNotNone(result["crash"])
        self.assertIn("planted bug", result["crash"]["report"])
        self.assertTrue(os.listdir(keep))


class CommandTests(unittest.TestCase):
    def test_list(self):
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(cli.main(["fuzz", "--list", "--json"]), 0)
        rows = json.loads(out.getvalue())["targets"]
        self.assertEqual([r["target"] for r in rows], registry.names())

    def test_replayCommand(self):
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(cli.main(["fuzz", "cell", "--replay", "--json"]), 0)
        self.assertEqual(json.loads(out.getvalue())["replayed"][0]["target"], "cell")

    def test_unknownTargetIsOneLine(self):
        err = io.StringIO()
        with redirect_stderr(err):
            self.assertEqual(cli.main(["fuzz", "nope", "--seconds", "1"]), 1)
        self.assertIn("no fuzz target 'nope'", err.getvalue())
        self.assertEqual(len(err.getvalue().splitlines()), 1)
