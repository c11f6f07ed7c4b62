"""Where each target's checked-in inputs live, and writing the seed corpus from the targets' real messages.

C{corpus/TARGET/seed-*}: real messages serialised by the project's
encoders (L{writeSeeds}; regenerate after a format change).
C{regressions/TARGET/*}: inputs that once crashed a parser, each named
after the bug; they are replayed by the tests for ever.
"""

import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
REGRESSIONS = os.path.join(HERE, "regressions")


def seedDir(name):
    return os.path.join(CORPUS, name)


def regressionDir(name):
    return os.path.join(REGRESSIONS, name)


def inputs(name):
    """@return: C{[(path, bytes)]} of every checked-in input of target C{name} (seeds, then regressions)."""
    out = []
    for directory in (seedDir(name), regressionDir(name)):
        if os.path.isdir(directory):
            for entry in sorted(os.listdir(directory)):
                path = os.path.join(directory, entry)
                with open(path, "rb") as f:
                    out.append((path, f.read()))
    return out


def writeSeeds(target):
    """Replace C{target}'s seed files with its current real messages. @return: how many."""
    directory = seedDir(target.name)
    os.makedirs(directory, exist_ok=True)
    for entry in os.listdir(directory):
        if entry.startswith("seed-"):
            os.unlink(os.path.join(directory, entry))
    seeds = target.seeds()
    for data in seeds:
        with open(os.path.join(directory, "seed-" + hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
            f.write(data)
    return len(seeds)
