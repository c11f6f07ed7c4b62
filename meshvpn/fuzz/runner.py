"""Start atheris runs of fuzz targets in child processes and read what they found.

One run is C{python -m meshvpn.fuzz.child TARGET} with libFuzzer flags:
a time limit, a per-input timeout (a hang is a bug), an RSS limit (so is
unbounded memory), the work corpus first (libFuzzer adds what it finds
there) and the checked-in seeds and regressions after it (read only).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from meshvpn.fuzz import corpora

MAX_LEN = 4096
TIMEOUT_S = 10
RSS_LIMIT_MB = 1024
_STAT = re.compile(rb"^stat::(\w+):\s+(\d+)", re.M)
_COV = re.compile(rb"cov: (\d+) ft: (\d+)")


def command(name, seconds, workCorpus, artifacts, extra=()):
    dirs = [workCorpus] + [d for d in (corpora.seedDir(name), corpora.regressionDir(name)) if os.path.isdir(d)]
    return [
        sys.executable, "-m", "meshvpn.fuzz.child", name,
        f"-max_total_time={int(seconds)}", f"-timeout={TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_LEN}", "-print_final_stats=1", f"-artifact_prefix={artifacts}{os.sep}", *extra, *dirs,
    ]


class Run:
    """One child process fuzzing one target."""

    def __init__(self, name, seconds, corpus=None, extra=()):
        self.name = name
        self.seconds = seconds
        self._tmp = tempfile.mkdtemp(prefix=f"meshvpn-fuzz-{name}-")
        self.corpus = corpus or os.path.join(self._tmp, "corpus")
        self.artifacts = os.path.join(self._tmp, "artifacts")
        os.makedirs(self.corpus, exist_ok=True)
        os.makedirs(self.artifacts, exist_ok=True)
        self._log = open(os.path.join(self._tmp, "log"), "w+b")
        self.started = time.monotonic()
        self.process = subprocess.Popen(command(name, seconds, self.corpus, self.artifacts, extra),
                                        stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self, keepArtifacts=None):
        """
        Wait for the run and clean up.

        @param keepArtifacts: a directory to copy crashing inputs to.
        @return: a dict: target, seconds, exit code, executions, coverage,
            corpus sizes, peak RSS, and C{crash} (C{None} or the input's
            path and the report's last lines).
        """
        # libFuzzer stops on its own; the extra margin covers start-up.
        try:
            code = self.process.wait(timeout=self.seconds + 120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.seek(0)
        log = self._log.read()
        self._log.close()
        stats = {k.decode(): int(v) for k, v in _STAT.findall(log)}
        cov = _COV.findall(log)
        found = sorted(os.listdir(self.artifacts))
        crash = None
        if code != 0 or found:
            lines = log.decode("utf-8", "replace").splitlines()
            start = next((i for i, line in enumerate(lines) if "Uncaught Python exception" in line), max(0, len(lines) - 30))
            crash = {"inputs": found, "report": "\n".join(lines[start : start + 40])}
            if keepArtifacts and found:
                os.makedirs(keepArtifacts, exist_ok=True)
                for entry in found:
                    shutil.copy(os.path.join(self.artifacts, entry), os.path.join(keepArtifacts, f"{self.name}-{entry}"))
                crash["kept"] = keepArtifacts
        result = {
            "target": self.name,
            "seconds": round(time.monotonic() - self.started, 1),
            "exit_code": code,
            "executions": stats.get("number_of_executed_units", 0),
            "coverage": int(cov[-1][0]) if cov else 0,
            "features": int(cov[-1][1]) if cov else 0,
            "new_units": stats.get("new_units_added", 0),
            "seed_inputs": len(corpora.inputs(self.name)),
            "peak_rss_mb": stats.get("peak_rss_mb", 0),
            "crash": crash,
        }
        shutil.rmtree(self._tmp, ignore_errors=True)
        return result


def runAll(names, seconds, parallel=2, keepArtifacts=None, corpusRoot=None, extra=()):
    """Run C{names} C{parallel} at a time (C{extra}: libFuzzer flags). @return: their result dicts, in order."""
    pending, running, results = list(names), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            corpus = os.path.join(corpusRoot, name) if corpusRoot else None
            running.append(Run(name, seconds, corpus, extra))
        run = running.pop(0)
        results[run.name] = run.wait(keepArtifacts)
    return [results[n] for n in names]
