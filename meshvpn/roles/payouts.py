"""Wiring of relay payouts: a relay publishes its address (and may check its pay), the issuer pays each epoch.

The payer is the issuer role (it already holds a Monero wallet and is the
party clients pay): with C{--payout-budget} it computes the epoch's
weights as every client does and pays each measured relay its share
(L{meshvpn.payments.payoutepoch}).  A relay with C{--payout-address}
publishes it; with C{--payout-payer} and C{--payout-wallet-rpc} as well it
recomputes the plan and checks its wallet (L{meshvpn.payments.payoutcheck}).
Both sample the whole directory they can see (up to 1024 relays per role),
not a client's path-building sample, so they read the same reports.
Both read the relays' capacity probes as a client with the default
C{--probe-weights} does: the probe reports of the same relays, kept by the
plan drawn from the same directory and the same seed records, so that a relay's pay, like its
weight, is held to what it forwarded when probed (past the version
deadline, L{meshvpn.measure.probed.PROBES_CAP_FROM}).  Neither has a
setting to turn them off: payer and relay must compute alike.
"""

from meshvpn.dht.service import RelayFinder
from meshvpn.measure.aggregate import computeWeights
from meshvpn.measure.seedservice import SeedService
from meshvpn.measure.service import MeasuredWeights, inThread
from meshvpn.payments.monero import MoneroRPC, MoneroWallet
from meshvpn.payments.payoutaddress import PayoutAddressBook, PayoutAddressPublisher
from meshvpn.payments.payoutcheck import PayoutCheck
from meshvpn.payments.payoutepoch import EpochPayer
from meshvpn.roles.common import addService

DIRECTORY_SAMPLE = 1024


def payoutWeights(clock, dht, relays, epochLength, dataDir=None, compute=computeWeights):
    """
    The weights payer and relay compute, alike: every relay of C{relays()}
    (C{{nodeId: descriptor}}) read, with the probe reports kept by the plans
    drawn from that same directory, as a client with C{--probe-weights} does.
    """
    return MeasuredWeights(clock, dht, lambda: {i: d.flags for i, d in relays().items()}, epochLength,
                           dataDir=dataDir, compute=compute, directory=lambda: dict(relays()),
                           seeds=SeedService(clock, dht, epochLength))


def _weights(node, settings, dht, dataDir=None):
    finder = addService(dht, "payout-finder", RelayFinder(dht, 300.0, perRole=DIRECTORY_SAMPLE))
    weights = payoutWeights(node.reactor, dht.everyFamily, lambda: finder.relays, settings["measure_epoch"],
                            dataDir=dataDir, compute=inThread(node.reactor))
    return addService(dht, "payout-weights", weights)


def addRelayPayouts(node, settings, dht):
    """A relay's C{"payout-address"} publisher and, if configured, its C{"payout-check"}. @return: the check or C{None}."""
    if settings["payout_address"] is None:
        return None
    publisher = PayoutAddressPublisher(node.reactor, node.identity, dht.everyFamily, settings["payout_address"],
                                       settings["dht_republish"])
    addService(dht, "payout-address", publisher)
    node.status.addSource("payout_address", publisher)
    if settings["payout_payer"] is None or settings["payout_wallet_rpc"] is None:
        return None
    wallet = MoneroWallet(MoneroRPC(node.reactor, settings["payout_wallet_rpc"]))
    check = PayoutCheck(node.identity.nodeId, dht.everyFamily, _weights(node, settings, dht), settings["payout_payer"],
                        PayoutAddressBook(dht.everyFamily).addressOf, wallet, settings["payout_address_index"])
    addService(dht, "payout-check", check)
    node.status.addSource("payout_check", check)
    return check


def addRelayPayer(node, settings, dht):
    """The issuer's C{"payouts"} service when it has a budget. @return: the L{EpochPayer} or C{None}."""
    if not settings["payout_budget"]:
        return None
    weights = _weights(node, settings, dht, dataDir=node.dataDir)
    wallet = MoneroWallet(MoneroRPC(node.reactor, settings["monero_wallet_rpc"]))
    payer = EpochPayer(node.reactor, node.identity, dht.everyFamily, weights, wallet,
                       PayoutAddressBook(dht.everyFamily).addressOf, settings["payout_budget"])
    addService(dht, "payouts", payer)
    node.status.addSource("payouts", payer)
    return payer
