"""Fuzz target: a relay descriptor (dht/descriptor.py parseDescriptor), as a client reads one from the DHT.

Signature checking is off for the fuzzer's inputs (it cannot forge one, and
every check after the signature would be out of its reach), and on for the
real seeds, which must still parse.
"""

from meshvpn.dht.descriptor import DescriptorError, encodeDescriptor, makeDescriptor, parseDescriptor
from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget


def _run(data):
    parseDescriptor(data, now=realmsgs.NOW, verify=False)


def _seeds():
    relay = realmsgs.identity(14)
    exit_ = makeDescriptor(relay, {"tls": "198.18.0.14:9001", "datagram": "198.18.0.14:9000"},
                           ("guard", "middle", "exit", "stun"), realmsgs.NOW, exitPolicy="accept 80,443",
                           bandwidth=1 << 20, family=(realmsgs.identity(15).nodeId,))
    middle = makeDescriptor(relay, [("tls", "[2001:db8::14]:9001")], ("middle",), realmsgs.NOW)
    out = [encodeDescriptor(exit_), encodeDescriptor(middle)]
    for raw in out:
        parseDescriptor(raw, now=realmsgs.NOW)
    return out


TARGET = FuzzTarget("descriptor", "dht/descriptor.py parseDescriptor (relay descriptors from the DHT)",
                    (DescriptorError,), _run, _seeds)
