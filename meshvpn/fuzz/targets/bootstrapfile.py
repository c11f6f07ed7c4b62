"""Fuzz target: a client's first contacts from files (client/bootstrapfile.py, bootstrapsources.py, dht/service.py loadTable).

The first input byte picks the file:

 - a signed bootstrap file (the package's, the config directory's, or one
   named on the command line; it may come from a web site).  For half of
   these the harness re-signs whatever JSON object it was given with the
   trusted test key, as a network's operator would, so the fuzzer reaches
   the checks after the signature (time, nodes); the rest keep their bytes;
 - a C{bootstrap-signers} file (trusted keys, one per line);
 - the user's C{bootstrap-nodes} list;
 - the DHT's saved routing table (C{dht-table.json}), whose damage must
   only ever mean "no saved contacts".

Declared errors: L{BootstrapFileError} for the first two; none for the
other two (a damaged list or table is skipped, never a traceback).
"""

import base64
import json
import os
import tempfile

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshvpn.client import bootstrapfile, bootstrapsources
from meshvpn.dht.service import loadTable
from meshvpn.fuzz import realmsgs
from meshvpn.fuzz.target import FuzzTarget

_KEY = Ed25519PrivateKey.from_private_bytes(bytes([40]) * 32)
_TRUSTED = {_KEY.public_key().public_bytes_raw()}
_DIR = tempfile.mkdtemp(prefix="meshvpn-fuzz-bootstrap-")


def _resign(data):
    """The same JSON object with a good signature, or the bytes unchanged when that is not possible."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return data
    if not isinstance(doc, dict):
        return data
    body = {k: v for k, v in doc.items() if k != "signature"}
    try:
        signed = _KEY.sign(bootstrapfile.canonical(body))
    except (ValueError, TypeError, RecursionError):
        return data
    return json.dumps({**body, "signature": base64.b64encode(signed).decode()}).encode()


def _write(name, data):
    path = os.path.join(_DIR, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _run(data):
    if not data:
        return
    which, rest = data[0] % 5, data[1:]
    if which in (0, 1):
        network, nodes, expires = bootstrapfile.parse(_resign(rest) if which else rest, _TRUSTED, now=realmsgs.NOW)
        if not nodes or not isinstance(network, str) or expires < realmsgs.NOW:
            raise AssertionError("parse accepted a file with no nodes, no network or already expired")
    elif which == 2:
        bootstrapfile.loadSigners(_write(bootstrapsources.SIGNERS_FILE, rest))
    elif which == 3:
        _write(bootstrapsources.NODES_FILE, rest)
        if len(bootstrapsources.readUserNodes(_DIR)) > bootstrapsources.MAX_USER_NODES:
            raise AssertionError("more user nodes than the limit")
    else:
        loadTable(_write("dht-table.json", rest))


def _seeds():
    signed = bootstrapfile.sign(_KEY, ["198.18.0.1:9000", "[2001:db8::1]:9000"], network="test",
                                published=realmsgs.NOW - 86400)
    signers = b"# trusted\n" + base64.b64encode(_KEY.public_key().public_bytes_raw()) + b"  # the test network\n"
    nodes = b"# added by 'meshvpn bootstrap add'\n198.18.0.1:9000\n[2001:db8::2]:9000\nnot an address\n"
    table = json.dumps({"version": 1, "contacts": [[bytes(range(32)).hex(), "198.18.0.5", 9000],
                                                   [bytes(32).hex(), "2001:db8::5", 9000]]}).encode()
    return [b"\0" + signed, b"\1" + signed, b"\2" + signers, b"\3" + nodes, b"\4" + table]


TARGET = FuzzTarget("bootstrap-file", "client/bootstrapfile.py signed bootstrap files and signers, the user's "
                    "bootstrap-nodes, dht/service.py loadTable (dht-table.json)",
                    (bootstrapfile.BootstrapFileError,), _run, _seeds)
