"""Fuzz target: DHT rendezvous values (nat/rendezvous.py): where a peer says it can be signalled."""

from meshvpn.fuzz.target import FuzzTarget
from meshvpn.nat import rendezvous as rv


def _run(data):
    relayId, addresses = rv.parseRendezvous(data)
    assert rv.encodeRendezvous(relayId, addresses) == data


def _seeds():
    return [
        rv.encodeRendezvous(bytes(range(32)), [("198.18.0.5", 7000)]),
        rv.encodeRendezvous(b"r" * 32, [("198.18.0.5", 7000), ("2001:db8::5", 7000)]),
    ]


TARGET = FuzzTarget("nat-rendezvous", "nat/rendezvous.py parseRendezvous (DHT records naming a peer's signalling relay)",
                    (rv.RendezvousError,), _run, _seeds)
