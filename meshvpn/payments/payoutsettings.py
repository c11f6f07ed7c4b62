"""The settings of relay payouts: a relay's address and its check, the payer's budget."""

from meshvpn.config import Setting, parseText
from meshvpn.payments.payouts import PayoutError, parseAddress


def parsePayoutAddress(raw):
    if not isinstance(raw, str):
        raise ValueError("a Monero address (95 or 106 base58 characters)")
    try:
        return parseAddress(raw.encode("ascii", "replace"))
    except PayoutError as e:
        raise ValueError(str(e)) from None


def parseNodeId(raw):
    try:
        value = bytes.fromhex(raw) if isinstance(raw, str) else b""
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ValueError("a node id: 64 hex digits (meshvpn status shows a node's)")
    return value


def parseIndex(raw):
    try:
        value = int(raw) if not isinstance(raw, bool) else -1
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value < 2**32:
        raise ValueError("a subaddress index, 0 or more")
    return value


def parseBudget(raw):
    try:
        value = int(raw) if not isinstance(raw, bool) else -1
    except (TypeError, ValueError):
        value = -1
    if value < 0:
        raise ValueError("atomic units per measurement epoch, 0 (no payouts) or more")
    return value


def relayPayoutSettings():
    return [
        Setting("payout-address", parsePayoutAddress, None,
                "Monero address this relay is paid at for the traffic it carries (published in the DHT)."),
        Setting("payout-payer", parseNodeId, None, "Node id of the payer whose payouts this relay checks."),
        Setting("payout-wallet-rpc", parseText, None,
                "URL of a monero-wallet-rpc holding the payout address, to check what was received."),
        Setting("payout-address-index", parseIndex, 0, "Subaddress index of the payout address in that wallet."),
    ]


def payerSettings():
    return [
        Setting("payout-budget", parseBudget, 0,
                "Atomic units paid out to relays per measurement epoch, by measured traffic (0: no payouts)."),
    ]
