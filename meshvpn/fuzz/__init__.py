"""Coverage-guided fuzzing of every parser that reads bytes from the network or a file.

Each target (L{meshvpn.fuzz.targets}) feeds one input to the real parser
and lets only that parser's declared error through as "rejected"; anything
else is a bug.  L{meshvpn.fuzz.registry} names the targets,
L{meshvpn.fuzz.child} runs one under atheris (libFuzzer) in its own process,
L{meshvpn.fuzz.runner} starts and reads such runs (``meshvpn fuzz``), and
L{meshvpn.fuzz.replay} feeds the checked-in corpus and the kept crashing
inputs to the targets in process (the regression tests).
"""
