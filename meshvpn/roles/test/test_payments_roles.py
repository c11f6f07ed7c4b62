"""The payment wiring of the roles: the issuer role starts and serves its API; exits and clients gain their parts.

In process, with the real reactor on loopback; the issuer's Monero wallet
is not running here (the issuer starts anyway and says the wallet is
unavailable when asked to sell), so these tests need no Monero.
"""

import json
import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from meshvpn.client.paying import CircuitPayer, PaymentClient
from meshvpn.exit.paygate import PaidExitEdge
from meshvpn.payments.issuerclient import IssuerClient, IssuerError
from meshvpn.roles import client, issuer, relay
from meshvpn.roles.node import NODE_FILE


def start(node):
    node.privilegedStartService()
    node.startService()
    return node.whenStarted


class IssuerRoleTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_startServeStop(self):
        options = issuer.Options()
        dataDir = os.path.abspath(self.mktemp())
        options.parseOptions([
            "--data-dir", dataDir, "--udp", "127.0.0.1:0", "--listen", "tcp:0:interface=127.0.0.1",
            "--monero-wallet-rpc", "http://127.0.0.1:9/json_rpc", "--price", "0.002xmr", "--packs", "5,10",
            "--epoch-length", "3600", "--poll-interval", "60",
        ])
        node = issuer.makeService(options)
        info = yield start(node)
        self.addCleanup(node.stopService)
        with open(os.path.join(dataDir, NODE_FILE)) as f:
            self.assertEqual(json.load(f)["http"], info["http"])
        api = IssuerClient(reactor, f"http://{info['http']}", timeout=10)
        offer = yield defer.Deferred.fromCoroutine(api.offer())
        self.assertEqual((offer.issuerId.hex(), offer.price, offer.packs), (info["node_id"], 2 * 10**9, (5, 10)))
        e = yield self.assertFailure(defer.Deferred.fromCoroutine(api.purchase(5)), IssuerError)
        self.assertEqual(e.status, 503)  # no wallet RPC at port 9: a clear answer, not a crash
        self.assertTrue(os.path.exists(os.path.join(dataDir, "issuer-keys", f"epoch-{offer.signing.epoch}.pem")))
        self.flushLoggedErrors()

    def test_configErrors(self):
        options = issuer.Options()
        with self.assertRaises(SystemExit) as e:
            options.parseOptions(["--price", "0.0000000000001xmr"])
        self.assertIn("--price", str(e.exception))
        with self.assertRaises(SystemExit):
            issuer.Options().parseOptions(["--packs", "0,5"])


class ExitAndClientWiringTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_gatedExit(self):
        options = relay.Options()
        options.parseOptions([
            "--data-dir", os.path.abspath(self.mktemp()), "--udp", "127.0.0.1:0", "--listen", "tcp:0:interface=127.0.0.1",
            "--flags", "exit,middle", "--payment-issuers", "ab" * 32, "--payment-free-rate", "64K",
            "--payment-bytes-per-token", "1M", "--exit-dns", "127.0.0.1:53",
        ])
        node = relay.makeService(options)
        self.assertIsInstance(node.getServiceNamed("onion").switch.edge, PaidExitEdge)
        gate = node.getServiceNamed("onion").switch.edge.gate
        self.assertEqual((gate.terms.freeRate, gate.terms.bytesPerToken), (64 * 1024, 1 << 20))
        yield start(node)
        yield node.stopService()

    def test_paymentIssuersNeedAnExit(self):
        options = relay.Options()
        options.parseOptions(["--data-dir", os.path.abspath(self.mktemp()), "--payment-issuers", "ab" * 32])
        with self.assertRaises(SystemExit):
            relay.makeService(options)

    def test_ungatedByDefault(self):
        options = relay.Options()
        options.parseOptions(["--data-dir", os.path.abspath(self.mktemp()), "--flags", "exit", "--exit-dns", "127.0.0.1:53"])
        node = relay.makeService(options)
        self.assertNotIsInstance(node.getServiceNamed("onion").switch.edge, PaidExitEdge)

    def test_clientWithWallet(self):
        options = client.Options()
        wallet = os.path.abspath(self.mktemp())
        options.parseOptions(["--data-dir", os.path.abspath(self.mktemp()), "--payment-wallet", wallet])
        node = client.makeService(options)
        self.assertIsInstance(node.status.sources["payments"], PaymentClient)
        self.assertTrue(os.path.isdir(os.path.join(wallet, "tokens")))
        CircuitPayer  # each circuit's stream layer is wrapped: test_gating covers it
