"""The commands ``meshvpn up``, ``meshvpn down`` and ``meshvpn bootstrap add|list|sign|keygen``."""

from meshvpn.errors import MeshVPNError


def addUpDownCommands(sub):
    for name, help in (("up", "turn the VPN on (or just SOCKS5 with --socks-only), in the background"),
                       ("down", "turn it off and put routes, DNS and the firewall back as they were")):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", default=None,
                       help="client config (default /etc/meshvpn/client.toml as root, else ~/.config/meshvpn/client.toml)")
        p.add_argument("--data-dir", default=None, help="keys and state (default /var/lib/meshvpn/client as root)")
        p.add_argument("--run-dir", default=None, help="where the running client is recorded (default /run/meshvpn as root)")
        if name == "up":
            p.add_argument("--socks-only", action="store_true",
                           help="no TUN, no routes, no root needed: only SOCKS5 for applications that use it")
            p.add_argument("--wait", type=float, default=90.0, help="seconds to wait for traffic to flow (default 90)")
            p.add_argument("--probe", type=float, default=3.0,
                           help="seconds to wait for a bootstrap node to answer STUN before starting (0: skip)")
            p.add_argument("--bootstrap-file", default=None, help="a signed bootstrap file to use too")
            p.set_defaults(func=_up)
        else:
            p.set_defaults(func=_down)

    p = sub.add_parser("bootstrap", help="the nodes a client starts from: add, list; sign files for a network",
                       description="Bootstrap nodes: the addresses a client asks first (see 'meshvpn bootstrap list').")
    bsub = p.add_subparsers(dest="bootstrap_command", required=True, metavar="ACTION")
    a = bsub.add_parser("add", help="add IP:PORT of a relay you trust to your list")
    a.add_argument("address")
    lst = bsub.add_parser("list", help="every bootstrap source and what it gives")
    lst.add_argument("--json", action="store_true")
    lst.add_argument("--bootstrap-file", default=None, help="also check this signed bootstrap file")
    for q in (a, lst):
        q.add_argument("--config", default=None, help="client config (its directory holds the lists)")
        q.add_argument("--data-dir", default=None, help="the client's data dir (its saved routing table)")
    k = bsub.add_parser("keygen", help="for a network's operators: create a key that signs bootstrap files")
    k.add_argument("key", help="file for the private key (created 0600)")
    s = bsub.add_parser("sign", help="for a network's operators: write a signed bootstrap file")
    s.add_argument("--key", required=True, help="the private key file from 'meshvpn bootstrap keygen'")
    s.add_argument("--network", default="main")
    s.add_argument("--days", type=float, default=30.0, help="how long the file stays valid (default 30)")
    s.add_argument("--out", required=True)
    s.add_argument("nodes", nargs="+", metavar="IP:PORT")
    p.set_defaults(func=_bootstrap)


def _up(args):
    from meshvpn.client.updown import up

    return up(args)


def _down(args):
    from meshvpn.client.updown import down

    return down(args)


def _bootstrap(args):
    import json

    from meshvpn.client import bootstrapfile
    from meshvpn.client.bootstrapsources import BootstrapSources, addUserNode
    from meshvpn.client.updown import Places, readConfig

    if args.bootstrap_command == "keygen":
        print(bootstrapfile.newSigningKey(args.key))
        return 0
    if args.bootstrap_command == "sign":
        key = bootstrapfile.loadSigningKey(args.key)
        data = bootstrapfile.sign(key, args.nodes, args.network, lifetime=args.days * 86400)
        from meshvpn.secretfile import writeSecretFile

        writeSecretFile(args.out, data)
        print(f"{args.out}: {len(args.nodes)} nodes, signed by {json.loads(data)['signer']}")
        return 0
    places = Places.choose(args.config, args.data_dir)
    if args.bootstrap_command == "add":
        try:
            address = addUserNode(places.configDir, args.address)
        except ValueError as e:
            raise MeshVPNError(str(e)) from None
        print(f"{address} added to {places.configDir}/bootstrap-nodes")
        return 0
    sources = BootstrapSources(places.configDir, places.dataDir, readConfig(places), extraFile=args.bootstrap_file)
    rows = sources.rows()
    if args.json:
        print(json.dumps([{"source": s, "address": a, "note": n} for s, a, n in rows]))
        return 0
    if not rows:
        print("no bootstrap nodes: add one with 'meshvpn bootstrap add IP:PORT'")
    for source, address, note in rows:
        print(f"{source:7} {address or '-':40} {note}".rstrip())
    return 0
