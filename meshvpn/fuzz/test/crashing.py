"""A target with a planted bug, to prove the runner notices a crash (used by test_fuzz only)."""

from meshvpn.fuzz.target import FuzzTarget


def _run(data):
    if data[:2] == b"ok":
        raise ValueError("declared: rejected")
    if len(data) >= 3 and data[0] == 0x42:
        raise IndexError("planted bug")


TARGET = FuzzTarget("crashing", "a planted bug", (ValueError,), _run, lambda: [b"ok", b"B"])
