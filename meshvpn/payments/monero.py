"""Monero's JSON-RPC (monerod and monero-wallet-rpc) over Twisted's HTTP client.

Why: the issuer must see payments arrive and count their confirmations, and
testnets and tests must mine blocks and pay, all without blocking the
reactor; both Monero programs speak JSON-RPC 2.0 over HTTP at C{/json_rpc}.
This module is the only place that knows their method names and result
shapes, and it checks the types of everything it reads: a wallet that
answers something unexpected is an error, never a wrong amount.

Amounts are integers in atomic units everywhere (1 XMR = 10**12
piconero); L{formatXMR} is for people only.  Responses are read up to a
bound, every call has a timeout, and connections are not kept open.
"""

import json

import attrs
from twisted.internet import defer
from twisted.web.client import Agent
from zope.interface import implementer

from meshvpn.errors import MeshVPNError
from meshvpn.interfaces import IMoneroWallet
from meshvpn.payments import httpclient

ATOMIC_PER_XMR = 10**12
MAX_RESPONSE = 16 * 1024 * 1024


class MoneroRPCError(MeshVPNError):
    """A JSON-RPC call failed: transport, HTTP status, a JSON-RPC error, or an unexpected result."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


def formatXMR(atomic):
    """C{1500000000} -> C{"0.0015 XMR"} (exact: integer arithmetic only)."""
    whole, frac = divmod(int(atomic), ATOMIC_PER_XMR)
    text = f"{whole}.{frac:012d}".rstrip("0").rstrip(".")
    return f"{text} XMR"


def _int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MoneroRPCError(f"unexpected {what} in the answer: {value!r}"[:200])
    return value


def _str(value, what):
    if not isinstance(value, str) or not value:
        raise MoneroRPCError(f"unexpected {what} in the answer")
    return value


class MoneroRPC:
    """
    One JSON-RPC endpoint, e.g. C{http://127.0.0.1:18081/json_rpc}.

    @param agent: an C{IAgent} (tests); default a non-persistent L{Agent}.
    """

    def __init__(self, reactor, url, timeout=120.0, agent=None, maxResponse=MAX_RESPONSE):
        self.reactor = reactor
        self.url = url if url.endswith("/json_rpc") else url.rstrip("/") + "/json_rpc"
        self.timeout = timeout
        self.agent = agent or Agent(reactor)
        self.maxResponse = maxResponse
        self._id = 0

    def call(self, method, params=None):
        """@return: a Deferred firing with the C{result} object (a dict)."""
        return defer.Deferred.fromCoroutine(self._call(method, params or {}))

    async def _call(self, method, params):
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": str(self._id), "method": method, "params": params}).encode()
        try:
            code, raw = await httpclient.request(
                self.reactor, "POST", self.url, body, {"Content-Type": "application/json"}, timeout=self.timeout,
                limit=self.maxResponse, agent=self.agent, error=MoneroRPCError,
            )
        except MoneroRPCError as e:
            raise MoneroRPCError(f"{method}: {e}") from None
        if code != 200:
            raise MoneroRPCError(f"{method}: HTTP {code}")
        try:
            answer = json.loads(raw)
        except ValueError:
            raise MoneroRPCError(f"{method}: answer is not JSON") from None
        if not isinstance(answer, dict):
            raise MoneroRPCError(f"{method}: answer is not a JSON object")
        error = answer.get("error")
        if error is not None:
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            code = error.get("code") if isinstance(error, dict) else None
            raise MoneroRPCError(f"{method}: {message}"[:300], code)
        result = answer.get("result")
        if not isinstance(result, dict):
            raise MoneroRPCError(f"{method}: answer has no result object")
        return result


@attrs.frozen
class Incoming:
    """One incoming transfer to a subaddress (confirmed, or still in the pool)."""

    txid: str
    amount: int  # atomic units
    subaddrIndex: int
    confirmations: int  # 0 while in the pool
    height: int  # 0 while in the pool
    unlockTime: int
    inPool: bool


@implementer(IMoneroWallet)
class MoneroWallet:
    """A wallet served by C{monero-wallet-rpc} (account 0)."""

    def __init__(self, rpc):
        self.rpc = rpc

    # -- wallet files (monero-wallet-rpc --wallet-dir)

    def createWallet(self, name, password=""):
        return self.rpc.call("create_wallet", {"filename": name, "password": password, "language": "English"})

    def openWallet(self, name, password=""):
        return self.rpc.call("open_wallet", {"filename": name, "password": password})

    def closeWallet(self):
        return self.rpc.call("close_wallet")

    # -- IMoneroWallet

    @defer.inlineCallbacks
    def address(self):
        result = yield self.rpc.call("get_address", {"account_index": 0})
        return _str(result.get("address"), "address")

    @defer.inlineCallbacks
    def createAddress(self, label):
        result = yield self.rpc.call("create_address", {"account_index": 0, "label": label})
        return _int(result.get("address_index"), "address_index"), _str(result.get("address"), "address")

    @defer.inlineCallbacks
    def incoming(self, indices):
        indices = sorted(set(indices))
        if not indices:
            return []
        result = yield self.rpc.call(
            "get_transfers", {"in": True, "pool": True, "account_index": 0, "subaddr_indices": indices}
        )
        out = []
        for kind in ("in", "pool"):
            entries = result.get(kind, [])
            if not isinstance(entries, list):
                raise MoneroRPCError(f"get_transfers: {kind!r} is not a list")
            for e in entries:
                if not isinstance(e, dict):
                    raise MoneroRPCError("get_transfers: an entry is not an object")
                sub = e.get("subaddr_index")
                minor = sub.get("minor") if isinstance(sub, dict) else None
                inPool = kind == "pool"
                out.append(Incoming(
                    txid=_str(e.get("txid"), "txid"),
                    amount=_int(e.get("amount"), "amount"),
                    subaddrIndex=_int(minor, "subaddr_index"),
                    confirmations=0 if inPool else _int(e.get("confirmations", 0), "confirmations"),
                    height=0 if inPool else _int(e.get("height", 0), "height"),
                    unlockTime=_int(e.get("unlock_time", 0), "unlock_time"),
                    inPool=inPool,
                ))
        return out

    @defer.inlineCallbacks
    def transfer(self, address, amount):
        yield self.refresh()  # build on the outputs the chain has now
        result = yield self.rpc.call(
            "transfer",
            {"destinations": [{"amount": _int(amount, "amount"), "address": address}], "account_index": 0, "priority": 0},
        )
        return _str(result.get("tx_hash"), "tx_hash"), _int(result.get("fee"), "fee")

    def refresh(self):
        return self.rpc.call("refresh")

    @defer.inlineCallbacks
    def balance(self):
        """@return: C{(balance, unlocked)} in atomic units."""
        result = yield self.rpc.call("get_balance", {"account_index": 0})
        return _int(result.get("balance"), "balance"), _int(result.get("unlocked_balance"), "unlocked_balance")


class MoneroDaemon:
    """C{monerod}'s JSON-RPC; L{generateBlocks} only works on a regtest daemon."""

    def __init__(self, rpc):
        self.rpc = rpc

    @defer.inlineCallbacks
    def height(self):
        result = yield self.rpc.call("get_info")
        return _int(result.get("height"), "height")

    @defer.inlineCallbacks
    def generateBlocks(self, count, address):
        """Mine C{count} blocks paying C{address}. @return: the new height (as L{height} counts)."""
        result = yield self.rpc.call("generateblocks", {"amount_of_blocks": count, "wallet_address": address})
        return _int(result.get("height"), "height") + 1  # it answers the index of the last block
