"""Wiring of bandwidth payments into the relay (exit) and client roles.

One call per role: L{addPaidExit} puts the payment gate in front of an
exit's edge (when ``--payment-issuers`` is set) and adds its chores as the
C{"payments"} service (issuer keys from the DHT, terms published, spends
reported to issuers); L{addClientPayments} gives a client with
``--payment-wallet`` the C{"paid-exits"} directory and the payer its
circuits use.  Both take their
collaborators explicitly; nothing is hung on the node.  The issuer is a
role of its own (L{meshvpn.roles.issuer}).
"""

import os

from meshvpn.client.paying import PaidExitDirectory, PaymentClient
from meshvpn.exit.packetexit import PacketExitEdge
from meshvpn.exit.paygate import GateTerms, PaidExitEdge, PaidExitService, PaymentGate, RedeemReporter
from meshvpn.payments.records import PaymentRecords
from meshvpn.payments.spentstore import SpentTokenStore
from meshvpn.payments.verifier import IssuerKeyCache, TokenVerifier
from meshvpn.payments.wallet import TokenWallet
from meshvpn.roles.common import addService

SPENT_DIR = "spent-tokens"


def addPaidExit(node, settings, onion, exitParts, dht):
    """
    Gate the exit's circuits on tokens of the issuers in ``--payment-issuers``.

    @return: the L{PaymentGate}, or C{None} when no issuer is configured.
    """
    issuers = settings.get("payment_issuers") or ()
    if not issuers:
        return None
    if exitParts is None:
        raise SystemExit("meshvpn-relay: config error: --payment-issuers needs --flags with exit")
    reactor = node.reactor
    records = PaymentRecords(dht.everyFamily, node.identity)
    keys = IssuerKeyCache(reactor, records, issuers)
    reporter = RedeemReporter(reactor, keys.apiOf) if settings["payment_report"] else None
    terms = GateTerms(
        issuers=tuple(issuers), bytesPerToken=settings["payment_bytes_per_token"], freeRate=settings["payment_free_rate"],
        paidRate=settings["payment_paid_rate"], grace=settings["payment_grace"],
        unconfirmed=settings["payment_unconfirmed_credit"],
    )
    spent = SpentTokenStore(os.path.join(node.dataDir, SPENT_DIR))
    gate = PaymentGate(reactor, terms, TokenVerifier(keys, spent), exitParts.limiter, keys, reporter)
    # The switch's edge is replaced before the node starts, so every circuit meets the gate.
    inner = onion.switch.edge
    if isinstance(inner, PacketExitEdge):
        inner.packetExit.downloadGate = gate.packetsToClient  # packet mode pays for replies too
    onion.switch.edge = PaidExitEdge(inner, gate)
    addService(node, "payments", PaidExitService(reactor, gate, keys, records, ready=lambda: dht.joined))
    node.status.addSource("payments", gate)
    return gate


def addClientPayments(node, settings, finder):
    """
    @return: the L{PaymentClient} (for L{meshvpn.roles.onionclient.addOnionClient}),
        or C{None} when no wallet is configured.
    """
    directory = settings.get("payment_wallet")
    if not directory:
        return None
    reactor = node.reactor
    wallet = TokenWallet(directory)
    dhtService = finder.dhtService
    paidExits = addService(node, "paid-exits", PaidExitDirectory(reactor, PaymentRecords(dhtService.everyFamily), wallet,
                                                                 ready=lambda: dhtService.joined))
    client = PaymentClient(reactor, wallet, paidExits)
    node.status.addSource("payments", client)
    return client
