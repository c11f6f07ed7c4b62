"""The issuer role: sells bandwidth tokens for Monero (``twistd meshvpn-issuer``).

A node (identity, one UDP socket, the DHT to publish its keys and price in)
plus the issuer service and its HTTP API.  It talks to a running
``monero-wallet-rpc`` that holds the issuer's wallet (started with
``--wallet-file`` and, outside tests, a ``--password-file``); the issuer
never holds Monero keys itself.  Everything it must not lose (epoch keys,
purchases, the spent-token lists) is in its data dir.
"""

import os
from decimal import Decimal, InvalidOperation

from twisted.internet import defer

from meshvpn.control.options import controlSettings
from meshvpn.config import RoleOptions, Setting, commonSettings, parseHostPort, parseServerEndpoint, parseText
from meshvpn.dht.service import DHTService, parseBootstrapList, parseSeconds
from meshvpn.hostport import formatHostPort
from meshvpn.payments.epochs import EpochSchedule
from meshvpn.payments.issuer import IssuerService, IssuerTerms
from meshvpn.payments.issuerhttp import IssuerAPI, QuietSite
from meshvpn.payments.issuerkeys import IssuerKeyStore
from meshvpn.payments.monero import ATOMIC_PER_XMR, MoneroRPC, MoneroWallet
from meshvpn.payments.purchases import PurchaseBook
from meshvpn.payments.records import PaymentRecords
from meshvpn.payments.spentstore import SpentTokenStore
from meshvpn.ports import StreamListenerService
from meshvpn.measure.settings import measureSettings
from meshvpn.payments.payoutsettings import payerSettings
from meshvpn.roles.common import addService, addServiceManagerHooks, buildNode
from meshvpn.roles.payouts import addRelayPayer


# Signing a purchase holds the reactor for about 6 ms per token (pure-Python RSA):
# at most 0.6 s for the largest pack.
MAX_PACK = 100


def parseAtomic(raw):
    """Atomic units (an integer), or an amount of XMR written with the suffix C{xmr} (e.g. C{0.001xmr})."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw
    if isinstance(raw, str):
        text = raw.strip().lower()
        try:
            if text.endswith("xmr"):
                value = Decimal(text[:-3].strip()) * ATOMIC_PER_XMR
            else:
                value = Decimal(text)
        except InvalidOperation:
            value = Decimal(0)
        if value > 0 and value == value.to_integral_value():
            return int(value)
    raise ValueError("a positive amount in atomic units (e.g. 1000000000) or in XMR (e.g. 0.001xmr)")


def parsePacks(raw):
    items = raw if isinstance(raw, list) else str(raw).split(",")
    try:
        packs = sorted({int(x) for x in items})
    except (TypeError, ValueError):
        packs = []
    if not packs or packs[0] < 1 or packs[-1] > MAX_PACK:
        raise ValueError(f"comma-separated pack sizes from 1 to {MAX_PACK}, e.g. 10,50,100")
    return tuple(packs)


def parseCount(low, high):
    def parse(raw):
        try:
            value = int(raw) if not isinstance(raw, bool) else None
        except (TypeError, ValueError):
            value = None
        if value is None or not low <= value <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return value

    return parse


class Options(RoleOptions):
    """Options for ``twistd meshvpn-issuer``."""

    role = "issuer"
    synopsis = "[options]"
    longdesc = (
        "Run a MeshVPN token issuer: sells bandwidth tokens for Monero through a monero-wallet-rpc, "
        "signs blinded token requests once paid, publishes its keys in the DHT."
    )
    schema = commonSettings("issuer", ("0.0.0.0", 0)) + [
        Setting("listen", parseServerEndpoint, "tcp:8480:interface=127.0.0.1", "Twisted endpoint string of the HTTP API."),
        Setting("api-address", parseHostPort, None, "HOST:PORT published in the DHT for the API (default: where it listens)."),
        Setting("bootstrap", parseBootstrapList, [], "Comma-separated HOST:PORT of DHT nodes to join through."),
        Setting("monero-wallet-rpc", parseText, "http://127.0.0.1:18083/json_rpc",
                "URL of the monero-wallet-rpc holding the issuer's wallet."),
        Setting("price", parseAtomic, 1_000_000_000, "Price of one token, atomic units or e.g. 0.001xmr."),
        Setting("packs", parsePacks, "10,50,100", "Numbers of tokens a purchase may be for (fixed denominations)."),
        Setting("confirmations", parseCount(0, 1000), 10, "Confirmations a payment needs before tokens are signed."),
        Setting("epoch-length", parseCount(60, 366 * 86400), 7 * 86400, "Seconds each signing key is used."),
        Setting("epoch-grace", parseCount(0, 16), 1, "Further epochs during which an epoch's tokens stay spendable."),
        Setting("poll-interval", parseSeconds, 5.0, "Seconds between looks at the wallet for payments."),
        Setting("purchase-lifetime", parseSeconds, 86400.0, "Seconds a purchase waits for its payment."),
        # Relay payouts by measured traffic (doc/measurement.md)
        *payerSettings(),
        *measureSettings(),
        *controlSettings(),
    ]


def addIssuer(node, settings, dht):
    """The C{"issuer"} service and its C{"http"} API listener, children of C{node}. @return: the L{IssuerService}."""
    reactor = node.reactor
    schedule = EpochSchedule(settings["epoch_length"], settings["epoch_grace"])
    terms = IssuerTerms(
        price=settings["price"], packs=settings["packs"], confirmations=settings["confirmations"],
        purchaseLifetime=settings["purchase_lifetime"], pollInterval=settings["poll_interval"],
    )
    listener = None

    def apiAddress():
        if settings["api_address"] is not None:
            return formatHostPort(*settings["api_address"])
        return listener.address()

    issuer = IssuerService(
        reactor, node.identity.nodeId,
        keys=IssuerKeyStore(node.dataDir, schedule),
        book=PurchaseBook(node.dataDir),
        wallet=MoneroWallet(MoneroRPC(reactor, settings["monero_wallet_rpc"])),
        spent=SpentTokenStore(os.path.join(node.dataDir, "spent")),
        terms=terms,
        records=PaymentRecords(dht.everyFamily, node.identity),
        apiAddress=apiAddress,
        ready=lambda: defer.gatherResults([dht.joined, node.whenStarted]),
    )
    addService(node, "issuer", issuer)
    listener = StreamListenerService(reactor, settings["listen"], QuietSite(IssuerAPI(reactor, issuer)))
    node.addListener("http", listener)
    node.status.addSource("issuer", issuer)
    return issuer


def makeService(options):
    node = buildNode("issuer", options.settings)
    dht = addService(node, "dht", DHTService(node, options.settings["bootstrap"]))
    addIssuer(node, options.settings, dht)
    addRelayPayer(node, options.settings, dht)
    from meshvpn.roles.control import addControl

    addControl(node, options, dht=dht)
    addServiceManagerHooks(node, options)
    return node
