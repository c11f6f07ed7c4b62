"""`meshvpn testnet --payments`: the local network, paid for with regtest Monero through a token issuer.

On top of `meshvpn testnet` (L{meshvpn.tools.testnet}): a private Monero
network (L{meshvpn.tools.moneroregtest}: monerod --regtest --offline, an
issuer wallet, a user wallet with mined coins), a ``twistd meshvpn-issuer``
selling tokens from the issuer wallet, both exits token-gated
(``--payment-issuers``, no free traffic), and a client with a token wallet.
The client then buys tokens with ``meshvpn wallet buy`` (a separate process,
as a person would), paying from the user wallet while this tool mines a
block every second for the confirmations, and fetches through a gated exit.

`--check` proves it: the purchase, the confirmations, the tokens spent at
the exit (read from both ends' status), and every byte of the page; exit 0
only if all hold.  Without it the network keeps running, mining a block
every few seconds so anyone's purchase confirms, until Ctrl-C.
Everything is on loopback and in one temporary directory removed at exit.
"""

import os
import subprocess
import sys
import threading
import time

from meshvpn.control.status import readStatus
from meshvpn.errors import MeshVPNError
from meshvpn.tools.moneroregtest import FUND_BLOCKS, MoneroRegtest, callSync
from meshvpn.tools.testnet import Testnet

ISSUER_HOST = "127.4.0.1"
PACK = 10
BYTES_PER_TOKEN = 1024 * 1024
CHECK_BYTES = 3_000_000  # about three tokens' worth
ISSUER_ARGS = ["--price", "0.001xmr", "--packs", "5,10,50", "--confirmations", "2", "--poll-interval", "1",
               "--epoch-length", "3600"]


class PaymentSetup:
    """The Monero network and the issuer, and the arguments that make exits gated and the client pay."""

    def __init__(self, out, base):
        self.out = out
        self.base = base
        self.monero = MoneroRegtest(("issuer", "user"), base=os.path.join(base, "monero"))
        self.issuer = None
        self.walletDir = os.path.join(base, "client-wallet")

    def startMonero(self):
        self.out("testnet: starting monerod --regtest --offline and two monero-wallet-rpc (issuer, user) ...")
        os.makedirs(self.monero.base, mode=0o700)
        self.monero.start()
        t = self.monero.timings
        self.out(f"testnet:   monerod answered after {t['monerod_start_s']}s, wallets after "
                 f"{t['wallet_issuer_start_s']}s and {t['wallet_user_start_s']}s")
        self.monero.fundSync("user")
        balance = callSync(self.monero.walletPorts["user"], "get_balance", {"account_index": 0})
        self.out(f"testnet:   mined {FUND_BLOCKS} regtest blocks to the user wallet in {self.monero.timings[f'mine_{FUND_BLOCKS}_s']}s; "
                 f"spendable {balance['unlocked_balance'] / 1e12:.3f} XMR")

    def makeIssuerIdentity(self, net):
        """The issuer's keys, made before any node starts, so the exits can be told its id."""
        from meshvpn.identity import NodeIdentity

        self.issuerId = NodeIdentity.loadOrCreate(os.path.join(net.base, "issuer")).nodeIdHex

    def startIssuer(self, net):
        bootUdp = next(n for n in net.nodes if n.name == "bootstrap").info["udp"]
        self.out("testnet: starting the token issuer ...")
        self.issuer = net.node("issuer", "issuer", ISSUER_HOST, ISSUER_ARGS + [
            "--bootstrap", bootUdp, "--monero-wallet-rpc", self.monero.walletURL("issuer"),
        ])
        info = self.issuer.waitReady()
        assert info["node_id"] == self.issuerId
        self.issuerURL = f"http://{info['http']}"
        self.out(f"testnet:   issuer {self.issuerId[:16]}… sells tokens at {self.issuerURL} "
                 f"(0.001 XMR each, {BYTES_PER_TOKEN >> 20} MiB at the exits, 2 confirmations)")

    def argsFor(self, name, host=None):
        if name.startswith("exit"):
            return ["--payment-issuers", self.issuerId, "--payment-bytes-per-token", str(BYTES_PER_TOKEN),
                    "--payment-free-rate", "none"]
        if name == "client":
            return ["--payment-wallet", self.walletDir]
        return []

    def waitExitsKnowIssuer(self, net, timeout=60.0):
        """Until both exits have read the issuer's info (its API address: they carry purchases to it unpaid)."""
        deadline = time.monotonic() + timeout
        exits = [n for n in net.nodes if n.name.startswith("exit")]
        while time.monotonic() < deadline:
            if all((readStatus(n.dataDir) or {}).get("payments", {}).get("issuer_apis_known") for n in exits):
                self.out("testnet: both exits read the issuer's key and API address from the DHT")
                return
            time.sleep(0.2)
        raise MeshVPNError("the exits did not find the issuer in the DHT; exit1 log:\n" + exits[0].logTail())

    def mine(self, blocks=1):
        return callSync(self.monero.daemonPort, "generateblocks",
                        {"amount_of_blocks": blocks, "wallet_address": self.monero.addresses["user"]})["height"] + 1

    def buy(self, net, count=PACK, timeout=180.0):
        """
        Run ``meshvpn wallet buy`` as its own process, mining a block a
        second until it is done.  It reaches the issuer through the client's
        SOCKS port (a circuit, as by default), names the issuer by its node
        id (its API address comes from its DHT record) and has the client
        check the issuer's key in the DHT.
        """
        socks = net.client.info["socks"]
        argv = [sys.executable, "-m", "meshvpn", "wallet", "--wallet-dir", self.walletDir, "buy", str(count),
                "--issuer", self.issuerId, "--pay-from", self.monero.walletURL("user"), "--spend-delay", "0",
                "--poll", "0.5", "--timeout", str(timeout), "--socks", socks]
        self.out(f"testnet: buying {count} tokens: meshvpn wallet buy {count} --issuer {self.issuerId[:16]}… "
                 f"--socks {socks} --pay-from <the user wallet> (mining a block every second meanwhile)")
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        reader = threading.Thread(target=self._relay, args=(proc.stdout,), daemon=True)
        reader.start()
        mined = 0
        while proc.poll() is None:
            time.sleep(1.0)
            if proc.poll() is None:
                self.mine(1)
                mined += 1
        reader.join(5)
        if proc.returncode != 0:
            raise MeshVPNError(f"meshvpn wallet buy failed (exit {proc.returncode})")
        self.out(f"testnet:   bought in {time.monotonic() - started:.1f}s ({mined} blocks mined meanwhile)")

    def _relay(self, stream):
        for line in stream:
            self.out(f"testnet:   {line.rstrip()}")

    def waitPaidExits(self, net, timeout=60.0):
        """Until the client knows the exits that take its new tokens (the DHT lookup after buying)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = readStatus(net.client.dataDir) or {}
            if status.get("payments", {}).get("paid_exits_known"):
                n = status["payments"]["paid_exits_known"]
                self.out(f"testnet: the client found {n} token-gated exit(s) in the DHT")
                return
            time.sleep(0.2)
        exit1 = next(n for n in net.nodes if n.name == "exit1")
        raise MeshVPNError("the client did not find the token-gated exits in the DHT; client log:\n"
                           f"{net.client.logTail()}\nexit1 log:\n{exit1.logTail()}")

    def report(self, net):
        """Print and check the payment, from both ends' status. @return: whether it holds."""
        client = (readStatus(net.client.dataDir) or {}).get("payments", {})
        spent = client.get("tokens_spent", 0)
        receipts = client.get("receipts", {})
        self.out(f"testnet: client spent {spent} token(s); exits' receipts: "
                 + (", ".join(f"{v} {k}" for k, v in receipts.items()) or "none")
                 + f"; {sum(client.get('tokens', {}).values())} left")
        accepted = viaExits = 0
        for node in net.nodes:
            if node.name.startswith("exit"):
                gate = (readStatus(node.dataDir) or {}).get("payments", {})
                accepted += gate.get("tokens_accepted", 0)
                if gate.get("issuer_streams"):
                    viaExits += gate["issuer_streams"]
                    self.out(f"testnet: {node.name} carried {gate['issuer_streams']} unpaid stream(s) to the issuer's API "
                             "(the purchase, through a circuit: the issuer saw the exit, not the buyer)")
                if gate.get("tokens_accepted"):
                    self.out(f"testnet: {node.name} accepted {gate['tokens_accepted']} token(s), "
                             f"refused {sum(gate.get('refused', {}).values())}, begins refused unpaid: "
                             f"{gate.get('begins_refused', 0)}; confirmed by the issuer before full credit: "
                             f"{gate.get('confirmed', 0)}")
        issuer = (readStatus(self.issuer.dataDir) or {}).get("issuer", {}).get("counters", {})
        self.out(f"testnet: issuer sold {issuer.get('tokens_signed', 0)} tokens; exits reported "
                 f"{issuer.get('redeemed', 0)} spent, {issuer.get('double_spends', 0)} double spends")
        return spent >= CHECK_BYTES // BYTES_PER_TOKEN and accepted == receipts.get("accepted", -1) and viaExits > 0

    def stop(self):
        self.monero.stop()


def run(args, out):
    setup = None
    net = Testnet(out, nodeArgs=lambda name, host: setup.argsFor(name, host))
    setup = PaymentSetup(out, net.base)
    try:
        setup.makeIssuerIdentity(net)
        setup.startMonero()
        net.start()
        setup.startIssuer(net)
        setup.waitExitsKnowIssuer(net)
        setup.buy(net)
        setup.waitPaidExits(net)
        if args.check:
            fetched = net.check(CHECK_BYTES)
            time.sleep(1.2)  # the nodes write their status every second
            paid = setup.report(net)
            if not paid:
                out("testnet: PAYMENT CHECK FAILED")
            return 0 if fetched and paid else 1
        out(f"testnet: buy more: {sys.executable} -m meshvpn wallet --wallet-dir {setup.walletDir} buy 10 "
            f"--issuer {setup.issuerId} --socks {net.client.info['socks']} --pay-from {setup.monero.walletURL('user')}")
        out("testnet: running (a regtest block every 2 s confirms purchases); press Ctrl-C to stop")
        try:
            while all(n.process.poll() is None for n in net.nodes):
                time.sleep(2.0)
                setup.mine(1)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        try:
            setup.stop()  # first: the nodes' directory, monero's included, goes with net.stop()
        finally:
            net.stop()
