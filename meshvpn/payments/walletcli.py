"""``meshvpn wallet``: the token balance, buying tokens, finishing an interrupted purchase.

Why a command of its own: buying takes minutes (confirmations) and happens
rarely, apart from the running client, which only spends.  Both share the
wallet directory (L{meshvpn.payments.wallet}); give the client the same one
with ``--payment-wallet``.

What it prints is what a person needs (the amount and the subaddress to pay,
then each confirmation) and nothing secret: no token, no purchase id, no
blinding value.  Paying can be left to any Monero wallet, or done at once
from a monero-wallet-rpc with ``--pay-from``.

Two things are on by default because a buyer cannot see them go wrong:
the issuer is reached through a MeshVPN circuit (the client's SOCKS port),
so it does not learn the buyer's address, and the key it offers is checked
against its signed record in the DHT before paying (read by the client
node sharing the wallet directory; see L{meshvpn.payments.buy}).
``--direct`` opts out of the first, loudly; there is no way around the second.
"""

import json
import os
import re
import sys
import time

from twisted.internet import defer
from twisted.python.failure import Failure

from meshvpn.config import defaultDataDir
from meshvpn.errors import MeshVPNError

DEFAULT_SOCKS = "127.0.0.1:1080"  # the MeshVPN client's default --socks-listen


def addWalletCommands(sub):
    p = sub.add_parser(
        "wallet", help="bandwidth tokens: balance, buy with Monero, resume a purchase",
        description="Show the token balance (default), buy tokens from an issuer with Monero, "
        "or finish purchases that were interrupted.",
    )
    p.add_argument("--wallet-dir", default=defaultDataDir("wallet"), help="the token wallet directory (created 0700)")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    b = actions.add_parser("balance", help="tokens per issuer: spendable, waiting, expired")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    buy = actions.add_parser("buy", help="buy N tokens: prints the amount and the subaddress to pay, waits, stores them")
    buy.add_argument("count", type=int, help="how many tokens (one of the issuer's pack sizes)")
    buy.add_argument("--issuer", required=True, metavar="ID|URL",
                     help="the issuer's node id (64 hex digits; its API address is read from its DHT record, and the "
                     "server must prove to be that issuer) or its HTTP API, e.g. http://198.51.100.7:8480")
    buy.add_argument("--pay-from", metavar="URL", help="pay at once from this monero-wallet-rpc (its open wallet)")
    buy.add_argument("--spend-delay", type=float, default=600.0, metavar="S",
                     help="each token becomes spendable after a random delay up to S seconds (default 600)")
    buy.add_argument("--timeout", type=float, default=None, metavar="S", help="give up waiting for the payment after S seconds")
    buy.add_argument("--poll", type=float, default=2.0, metavar="S", help="seconds between looks at the purchase")
    r = actions.add_parser("resume", help="finish purchases left pending (paid but not yet collected)")
    r.add_argument("--timeout", type=float, default=None, metavar="S")
    r.add_argument("--poll", type=float, default=2.0, metavar="S")
    for cmd in (buy, r):
        cmd.add_argument("--socks", metavar="IP:PORT", default=DEFAULT_SOCKS,
                         help="reach the issuer through this SOCKS5 proxy, so the issuer does not see this machine's "
                         f"address (default {DEFAULT_SOCKS}: the MeshVPN client's, whose circuits carry it; Tor's works too)")
        cmd.add_argument("--direct", action="store_true",
                         help="connect to the issuer directly: it then sees this machine's address")
        cmd.add_argument("--key-check-timeout", type=float, default=90.0, metavar="S",
                         help="seconds to wait for the client node to read the issuer's key from the DHT (default 90)")
    p.set_defaults(func=walletCommand, action=None)


def _runReactor(main):
    """Run C{main(reactor)} (a coroutine function) on the reactor; @return: its result."""
    from twisted.internet import reactor

    box = []

    def go():
        d = defer.Deferred.fromCoroutine(main(reactor))
        d.addBoth(lambda r: (box.append(r), reactor.stop()))

    reactor.callWhenRunning(go)
    reactor.run()
    if not box:  # stopped by a signal (Ctrl-C): the purchase, if any, is pending on disk
        print("meshvpn wallet: interrupted; 'meshvpn wallet resume' finishes a purchase already made", file=sys.stderr)
        return 130
    result = box[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def walletCommand(args, out=print):
    from meshvpn.payments.wallet import TokenWallet

    wallet = TokenWallet(os.path.abspath(args.wallet_dir))
    if args.action in (None, "balance"):
        return _balance(wallet, getattr(args, "json", False), out)
    if args.action == "buy":
        return _runReactor(lambda reactor: _buy(reactor, wallet, args, out))
    return _runReactor(lambda reactor: _resume(reactor, wallet, args, out))


def _balance(wallet, asJSON, out):
    now = time.time()
    balance = wallet.balance(now)
    pending = len(wallet.pending())
    if asJSON:
        out(json.dumps({"wallet": wallet.directory, "issuers": balance, "pending_purchases": pending}))
        return 0
    out(f"wallet {wallet.directory}")
    if not balance:
        out("no tokens (buy some: meshvpn wallet buy N --issuer ID)")
    for issuer, c in balance.items():
        waiting = ""
        if c["waiting"]:
            waiting = f", {c['waiting']} waiting (the first spendable in {max(0, c['next_spendable'] - now):.0f}s)"
        out(f"issuer {issuer[:16]}…: {c['usable']} tokens spendable{waiting}, {c['expired']} expired")
    if pending:
        out(f"{pending} purchase(s) pending: meshvpn wallet resume")
    return 0


def _check(reactor, wallet, args):
    from meshvpn.payments.buy import OfferCheck, WalletKeySource

    return OfferCheck(reactor, WalletKeySource(reactor, wallet, timeout=args.key_check_timeout))


async def _buy(reactor, wallet, args, out):
    from meshvpn.payments.buy import buy
    from meshvpn.payments.issuerclient import IssuerClient
    from meshvpn.payments.monero import MoneroRPC, MoneroWallet

    payer = MoneroWallet(MoneroRPC(reactor, args.pay_from)) if args.pay_from else None
    url, issuerId = await _issuer(reactor, wallet, args, out)
    agent = await _agent(reactor, args, out)
    got = await buy(reactor, IssuerClient(reactor, url, agent=agent), wallet, args.count, out, payer=payer,
                    pollInterval=args.poll, spendDelay=args.spend_delay, timeout=args.timeout,
                    check=_check(reactor, wallet, args), issuerId=issuerId)
    out(f"wallet: {got} tokens added to {wallet.directory}")
    return 0


async def _resume(reactor, wallet, args, out):
    from meshvpn.payments.buy import resume
    from meshvpn.payments.issuerclient import IssuerClient

    if not wallet.pending():
        out("wallet: no purchase pending")
        return 0
    agent = await _agent(reactor, args, out)
    got = await resume(reactor, lambda url: IssuerClient(reactor, url, agent=agent), wallet, out, args.poll, args.timeout,
                       check=_check(reactor, wallet, args))
    out(f"wallet: {got} tokens added")
    return 0


async def _issuer(reactor, wallet, args, out):
    """@return: C{(API URL, the issuer's node id or None)} for C{--issuer ID|URL}."""
    if not re.match(r"\A[0-9a-fA-F]{64}\Z", args.issuer):
        out("wallet: the issuer is whoever answers at this URL; name it by its node id (--issuer ID) to be sure")
        return args.issuer, None
    from meshvpn.payments.buy import WalletKeySource

    issuerId = bytes.fromhex(args.issuer)
    info, _ = await WalletKeySource(reactor, wallet, timeout=args.key_check_timeout).view(issuerId)
    if info is None:
        raise MeshVPNError(f"issuer {args.issuer[:16]}… has no record in the DHT (is the id right?)")
    out(f"wallet: issuer {args.issuer[:16]}…: API at {info.api} (from its record in the DHT)")
    return f"http://{info.api}", issuerId


async def _agent(reactor, args, out):
    """
    An agent through C{--socks} (by default the MeshVPN client's SOCKS
    port), after making sure something listens there; Twisted's default
    agent only with C{--direct}.
    """
    if args.direct:
        out("wallet: --direct: the issuer sees this machine's network address")
        return None
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    from meshvpn.hostport import HostPortError, parseIPPort
    from meshvpn.payments.socksagent import socksAgent

    try:
        host, port = parseIPPort(args.socks, allowZero=False)
    except HostPortError:
        raise MeshVPNError("--socks expects IP:PORT, e.g. 127.0.0.1:1080") from None
    endpoint = (TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint)(reactor, host, port, timeout=10)
    try:
        probe = await connectProtocol(endpoint, Protocol())
    except Exception:
        raise MeshVPNError(
            f"no SOCKS5 proxy at {args.socks}. Purchases go through a MeshVPN circuit so the issuer does not see this "
            "machine's address: start the client (twistd meshvpn-client ... --payment-wallet "
            f"{os.path.abspath(args.wallet_dir)}), or name another proxy with --socks IP:PORT (Tor's), "
            "or pass --direct to let the issuer see your address"
        ) from None
    probe.transport.loseConnection()
    out(f"wallet: reaching the issuer through the SOCKS5 proxy at {args.socks} (a circuit: the issuer sees its exit)")
    return socksAgent(reactor, host, port)

