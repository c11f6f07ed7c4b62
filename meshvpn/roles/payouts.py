"""Wiring of relay payouts: a relay publishes its address (and may check its pay), the issuer pays each epoch.

The payer is the issuer role (it already holds a Monero wallet and is the
party clients pay): with C{--payout-budget} it computes the epoch's
weights as every client does and pays each measured relay its share
(L{meshvpn.payments.payoutepoch}).  A relay with C{--payout-address}
publishes it; with C{--payout-payer} and C{--payout-wallet-rpc} as well it
recomputes the plan and checks its wallet (L{meshvpn.payments.payoutcheck}).
Both sample the whole directory they can see (up to 1024 relays per role),
not a client's path-building sample, so they read the same reports.
Neither reads capacity probes yet (a client's C{--probe-weights} is off by
default, and payer and relay must compute alike): pay follows the traffic
reports alone.
"""

from meshvpn.dht.service import RelayFinder
from meshvpn.measure.service import MeasuredWeights, inThread
from meshvpn.payments.monero import MoneroRPC, MoneroWallet
from meshvpn.payments.payoutaddress import PayoutAddressBook, PayoutAddressPublisher
from meshvpn.payments.payoutcheck import PayoutCheck
from meshvpn.payments.payoutepoch import EpochPayer
from meshvpn.roles.common import addService

DIRECTORY_SAMPLE = 1024


def _weights(node, settings, dht, dataDir=None):
    finder = addService(dht, "payout-finder", RelayFinder(dht, 300.0, perRole=DIRECTORY_SAMPLE))
    weights = MeasuredWeights(node.reactor, dht.everyFamily, lambda: {i: d.flags for i, d in finder.relays.items()},
                              settings["measure_epoch"], dataDir=dataDir, compute=inThread(node.reactor))
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
