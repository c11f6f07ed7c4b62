"""Fuzz target: an exit policy file (exit/policyparse.py via ExitPolicy.fromText), its summary and a decision."""

from meshvpn.exit.policy import ExitPolicy
from meshvpn.exit.policyparse import PolicyParseError
from meshvpn.fuzz.target import FuzzTarget


def _run(data):
    text = data.decode("utf-8", "replace")
    p = ExitPolicy.fromText(text, ownAddresses=("198.18.0.14",), warn=lambda message: None)
    p.summary(4)
    p.summary(6)
    p.allows("198.18.0.80", 443)
    p.allows("2001:db8::1", 80)
    p.allowsAddress("10.0.0.1")


def _seeds():
    return [
        b"accept *:80\naccept *:443\nreject *:*\n",
        b"ExitPolicy reject private:*, accept 198.18.0.0/15:20-23, reject6 [2001:db8::]/32:*, accept *6:53\n",
        b"# a comment\nreject 0.0.0.0/8:*\naccept [::ffff:198.18.0.0]/112:80\naccept *4:*\n",
    ]


TARGET = FuzzTarget("exit-policy", "exit/policyparse.py parsePolicy via ExitPolicy.fromText + summaries (policy files)",
                    (PolicyParseError,), _run, _seeds)
