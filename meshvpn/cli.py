"""The ``meshvpn`` command: one entry point with subcommands for people and scripts.

Each subcommand lives in a small function here or in the module it drives;
heavy imports happen inside the subcommand so ``meshvpn --help`` stays fast.
"""

import argparse
import base64
import json
import os
import sys

from meshvpn import __version__
from meshvpn.config import defaultDataDir
from meshvpn.errors import MeshVPNError


def _identityCommand(args):
    from meshvpn.identity import IDENTITY_FILE, NodeIdentity

    dataDir = os.path.abspath(args.data_dir)
    if args.command == "id" and not os.path.exists(os.path.join(dataDir, IDENTITY_FILE)):
        raise MeshVPNError(f"{dataDir}: no identity yet (create one with: meshvpn keygen --data-dir {args.data_dir})")
    ident = NodeIdentity.loadOrCreate(dataDir)
    info = {
        "node_id": ident.nodeIdHex,
        "identity_key_ed25519": base64.b64encode(ident.identityPublicKey).decode(),
        "onion_key_x25519": base64.b64encode(ident.onionPublicKey).decode(),
        "data_dir": dataDir,
    }
    if args.json:
        print(json.dumps(info))
    else:
        print(f"node id:       {info['node_id']}")
        print(f"identity key:  {info['identity_key_ed25519']}  (Ed25519)")
        print(f"onion key:     {info['onion_key_x25519']}  (X25519)")
        print(f"data dir:      {dataDir}")
    return 0


def _testnetCommand(args):
    from meshvpn.tools import testnet

    return testnet.run(args, lambda line: print(line, flush=True))


def _netcheckCommand(args):
    from meshvpn.nat.netcheck import run

    return run(args, lambda line: print(line, flush=True))


def _exitPolicyCommand(args):
    from meshvpn.exit.policycheck import run

    return run(args, print)


def buildParser():
    parser = argparse.ArgumentParser(prog="meshvpn", description="MeshVPN: a decentralized onion-routed VPN.")
    parser.add_argument("--version", action="version", version=f"meshvpn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, help in (
        ("id", "print a node's id and public keys"),
        ("keygen", "create a node's keys if missing, then print them like 'id'"),
    ):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--data-dir", default=defaultDataDir("client"), help="the node's data directory")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(func=_identityCommand)
    from meshvpn.control.cli import addControlCommands  # status, circuits, relays, events, newnym, vpn, set, dashboard

    addControlCommands(sub)
    p = sub.add_parser("testnet", help="run a complete MeshVPN network on loopback", description=_testnetDoc())
    p.add_argument("--check", action="store_true", help="start it, prove it works, stop it; exit 0 only on success")
    p.add_argument("--hostile", choices=["guard"], default=None,
                   help="test tooling: make the only guard attack the client's circuits (with --check: the client "
                        "must survive it and the guard must read nothing)")
    p.add_argument("--payments", action="store_true",
                   help="with a regtest Monero network, a token issuer and token-gated exits; the client buys tokens")
    p.set_defaults(func=_testnetCommand)
    p = sub.add_parser("weights", help="each relay's measured bandwidth, weight, uptime, flags and last report",
                       description="What the relays' signed traffic reports say of each relay, as this client "
                                   "computed it for path selection (doc/measurement.md).")
    from meshvpn.measure import cli as measureCLI

    measureCLI.addArguments(p, defaultDataDir("client"))
    p.set_defaults(func=lambda args: measureCLI.run(args))
    from meshvpn.tools.benchcommands import addBenchCommands

    addBenchCommands(sub)
    from meshvpn.fuzz.command import addFuzzCommand

    addFuzzCommand(sub)
    p = sub.add_parser("netcheck", help="report this host's NAT situation (STUN, RFC 5780)", description=_netcheckDoc())
    p.add_argument("--stun", action="append", metavar="HOST:PORT", required=True, help="a STUN server (repeatable)")
    p.add_argument("--bind", default="0.0.0.0:0", metavar="IP:PORT", help="local UDP address to probe from")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_netcheckCommand)
    p = sub.add_parser("exit-policy", help="show how an exit policy reads: rules, summary, a decision",
                       description="Show what the network will see of an exit policy: its rules as the exit runs them, "
                       "Tor's warnings, the summary clients choose exits by, and with --check one decision.")
    from meshvpn.exit.policycheck import addArguments as addExitPolicyArguments

    addExitPolicyArguments(p)
    p.set_defaults(func=_exitPolicyCommand)
    from meshvpn.client.vpncli import addTunCommands  # vpn-restore

    addTunCommands(sub)
    from meshvpn.client.updowncli import addUpDownCommands  # up, down, bootstrap

    addUpDownCommands(sub)
    from meshvpn.payments.walletcli import addWalletCommands  # wallet

    addWalletCommands(sub)
    return parser


def _testnetDoc():
    return "Start a local MeshVPN network of real twistd processes on loopback in a temporary directory."


def _netcheckDoc():
    return (
        "Probe the given STUN servers from a fresh UDP socket and report the mapped address, "
        "NAT mapping and filtering behaviour (RFC 5780), hairpinning, and each server's RTT."
    )


def main(argv=None):
    args = buildParser().parse_args(argv)
    try:
        return args.func(args)
    except MeshVPNError as e:
        print(f"meshvpn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
