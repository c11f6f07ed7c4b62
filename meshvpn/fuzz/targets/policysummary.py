"""Fuzz target: exit-policy summaries, binary (dht/policysummary.py decodeSummary, in descriptors) and text
(parseSummary, and exit/policy.py's parseSummary that path selection uses)."""

from meshvpn.dht import policysummary
from meshvpn.exit import policy
from meshvpn.exit.policyparse import PolicyParseError
from meshvpn.fuzz.target import FuzzTarget


def _run(data):
    if data[:1] == b"T":
        text = data[1:].decode("utf-8", "replace")
        policysummary.parseSummary(text)
        policy.parseSummary(text)
    else:
        text = policysummary.decodeSummary(data[1:])
        policysummary.encodeSummary(text)


def _seeds():
    texts = ["accept 80,443", "reject 1-65535", "accept 20-23,53,80,110,143,443,993,995,6660-6669",
             "reject 25,119,135-139,445,563,1214,4661-4666,6346-6429,6699,6881-6999"]
    return [b"T" + t.encode() for t in texts] + [b"B" + policysummary.encodeSummary(t) for t in texts]


TARGET = FuzzTarget("policy-summary", "dht/policysummary.py decodeSummary/parseSummary + exit/policy.py parseSummary",
                    (policysummary.SummaryError, PolicyParseError), _run, _seeds)
