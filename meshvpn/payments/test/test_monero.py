"""The Monero JSON-RPC client: against canned HTTP answers, then against a real regtest network.

The real tests share one ``monerod --regtest --offline`` and two
``monero-wallet-rpc`` servers (issuer, user) for the module
(L{meshvpn.tools.moneroregtest}); they are skipped where Monero is not
installed and fail instead under CI=true.
"""

import json

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.trial import unittest
from twisted.web import resource, server

from meshvpn.payments.monero import MoneroDaemon, MoneroRPC, MoneroRPCError, MoneroWallet, formatXMR


log = Logger()


class _Canned(resource.Resource):
    isLeaf = True

    def __init__(self, answer, code=200):
        super().__init__()
        self.answer = answer
        self.code = code
        self.requests = []

    def render_POST(self, request):
        self.requests.append(json.loads(request.content.read()))
        request.setResponseCode(self.code)
        return self.answer


class CannedAnswerTests(unittest.TestCase):
    """Every unexpected answer is a MoneroRPCError, never a wrong value."""

    def serve(self, answer, code=200):
        canned = _Canned(answer, code)
        port = reactor.listenTCP(0, server.Site(canned), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        rpc = MoneroRPC(reactor, f"http://127.0.0.1:{port.getHost().port}", timeout=10)
        return rpc, canned

    @defer.inlineCallbacks
    def test_resultAndRequestShape(self):
        rpc, canned = self.serve(json.dumps({"jsonrpc": "2.0", "id": "1", "result": {"height": 7}}).encode())
        height = yield MoneroDaemon(rpc).height()
        self.assertEqual(height, 7)
        self.assertEqual(canned.requests[0]["method"], "get_info")
        self.assertEqual(canned.requests[0]["jsonrpc"], "2.0")

    @defer.inlineCallbacks
    def test_errorAnswer(self):
        rpc, _ = self.serve(json.dumps({"error": {"code": -1, "message": "no wallet"}}).encode())
        e = yield self.assertFailure(rpc.call("get_address"), MoneroRPCError)
        self.assertEqual(e.code, -1)
        self.assertIn("no wallet", str(e))

    @defer.inlineCallbacks
    def test_wrongTypesRefused(self):
        for result in ({"height": "7"}, {"height": -1}, {"height": True}, {}):
            rpc, _ = self.serve(json.dumps({"result": result}).encode())
            yield self.assertFailure(MoneroDaemon(rpc).height(), MoneroRPCError)

    @defer.inlineCallbacks
    def test_notJSONAndHTTPErrors(self):
        rpc, _ = self.serve(b"<html>")
        yield self.assertFailure(rpc.call("get_info"), MoneroRPCError)
        rpc, _ = self.serve(b"{}", code=500)
        e = yield self.assertFailure(rpc.call("get_info"), MoneroRPCError)
        self.assertIn("HTTP 500", str(e))

    @defer.inlineCallbacks
    def test_answerTooLarge(self):
        rpc, _ = self.serve(json.dumps({"result": {"x": "a" * 5000}}).encode())
        rpc.maxResponse = 1000
        e = yield self.assertFailure(rpc.call("get_info"), MoneroRPCError)
        self.assertIn("larger than", str(e))

    @defer.inlineCallbacks
    def test_unreachable(self):
        port = reactor.listenTCP(0, server.Site(resource.Resource()), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        e = yield self.assertFailure(MoneroRPC(reactor, f"http://127.0.0.1:{number}").call("get_info"), MoneroRPCError)
        self.assertIn("cannot reach", str(e))

    @defer.inlineCallbacks
    def test_incomingParsed(self):
        answer = {"result": {
            "in": [{"txid": "ab", "amount": 5, "subaddr_index": {"major": 0, "minor": 3}, "confirmations": 4,
                    "height": 90, "unlock_time": 0}],
            "pool": [{"txid": "cd", "amount": 6, "subaddr_index": {"major": 0, "minor": 3}}],
        }}
        rpc, canned = self.serve(json.dumps(answer).encode())
        seen = yield MoneroWallet(rpc).incoming([3])
        self.assertEqual([(i.txid, i.amount, i.confirmations, i.inPool) for i in seen], [("ab", 5, 4, False), ("cd", 6, 0, True)])
        self.assertEqual(canned.requests[0]["params"]["subaddr_indices"], [3])

    def test_formatXMR(self):
        self.assertEqual(formatXMR(1_500_000_000), "0.0015 XMR")
        self.assertEqual(formatXMR(2 * 10**12), "2 XMR")
        self.assertEqual(formatXMR(1), "0.000000000001 XMR")


from meshvpn.payments.test.regtest import SHARED  # noqa: E402


class RegtestTests(unittest.TestCase):
    """A real regtest daemon and wallets: pay a fresh subaddress, watch it confirm."""

    timeout = 600

    def setUp(self):
        self.net = SHARED.get(self)
        self.issuer = MoneroWallet(MoneroRPC(reactor, self.net.walletURL("issuer")))
        self.user = MoneroWallet(MoneroRPC(reactor, self.net.walletURL("user")))
        self.daemon = MoneroDaemon(MoneroRPC(reactor, self.net.daemonURL()))

    @defer.inlineCallbacks
    def test_payASubaddressThenConfirm(self):
        log.info("regtest timings: {t}", t=self.net.timings)
        index, address = yield self.issuer.createAddress("purchase-test")
        self.assertGreater(index, 0)
        amount = 1_234_567_890
        txid, fee = yield self.user.transfer(address, amount)
        self.assertGreater(fee, 0)
        yield self.issuer.refresh()
        seen = yield self.issuer.incoming([index])
        self.assertEqual([(i.txid, i.amount, i.inPool) for i in seen], [(txid, amount, True)])
        before = yield self.daemon.height()
        after = yield self.daemon.generateBlocks(2, self.net.addresses["user"])
        self.assertEqual(after, before + 2)
        yield self.issuer.refresh()
        seen = yield self.issuer.incoming([index])
        self.assertEqual(len(seen), 1)
        self.assertEqual((seen[0].txid, seen[0].amount, seen[0].inPool, seen[0].subaddrIndex), (txid, amount, False, index))
        self.assertEqual(seen[0].confirmations, 2)
        self.assertEqual(seen[0].unlockTime, 0)
        # Another subaddress sees none of it.
        other, _ = yield self.issuer.createAddress("other")
        self.assertEqual((yield self.issuer.incoming([other])), [])

    @defer.inlineCallbacks
    def test_unknownMethodIsAnError(self):
        yield self.assertFailure(self.issuer.rpc.call("no_such_method"), MoneroRPCError)
