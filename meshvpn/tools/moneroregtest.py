"""A private Monero network on one machine: ``monerod --regtest --offline`` and wallet RPC servers.

For the payments tests and ``meshvpn testnet --payments``: real Monero
programs (Debian's ``monero`` package, installed by bin/install), so
payments, confirmations and subaddresses are the real thing, but on a
regtest chain nobody else has, where blocks are mined on demand
(``generateblocks``, a fraction of a second each).

Network rule: everything binds 127.0.0.1 on free ports, and nothing may
reach any other address.  The daemon runs ``--offline`` (no peers, no DNS),
with no seed nodes, no UPnP (``--no-igd``), no peers in or out, no DNS
checkpoints or update checks, and its P2P port bound to loopback anyway;
the wallets run ``--no-dns`` and only know the local daemon.  Each process
gets ``HOME`` and all its data in one temporary directory, removed by
L{MoneroRegtest.stop} (also after a failed start).

``monero-wallet-rpc`` has no regtest flag: it runs in mainnet mode against
the regtest daemon, whose addresses have mainnet prefixes.  One wallet RPC
server holds one open wallet, so each wallet (the issuer's, a user's) gets
its own server.

Process control and the readiness checks here are blocking (they run
before any reactor work, in a test's class setup or in the testnet tool);
talking to the programs afterwards goes through
L{meshvpn.payments.monero}, Twisted's HTTP client.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from meshvpn.errors import MeshVPNError

MONEROD = "monerod"
WALLET_RPC = "monero-wallet-rpc"
# Coinbase outputs unlock after 60 blocks, and a transfer needs 16 unlocked outputs
# on the chain for its ring (itself and 15 decoys).  With 80 blocks (20 unlocked)
# the first transfer works but monero-wallet-rpc 0.18 can spin for minutes picking
# decoys for the next ones; with 110 and more, six transfers in a row took < 1.2 s each.
FUND_BLOCKS = 120
MINE_BATCH = 20  # blocks per generateblocks call


class MoneroStartError(MeshVPNError):
    """monerod or monero-wallet-rpc is missing, exited, or never answered."""


def available():
    """@return: C{None} if both programs are on PATH, else why not."""
    missing = [p for p in (MONEROD, WALLET_RPC) if shutil.which(p) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (Debian package 'monero'; bin/install adds it)"
    return None


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def callSync(port, method, params=None, timeout=120.0):
    """
    One blocking JSON-RPC call to 127.0.0.1:C{port} (setup steps of tools
    that run no reactor).

    @raise MoneroStartError: unreachable or an error answer.
    """
    body = json.dumps({"jsonrpc": "2.0", "id": "0", "method": method, "params": params or {}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/json_rpc", body, {"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read(16 << 20))
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise MoneroStartError(f"{method} on 127.0.0.1:{port}: {e}") from None
    finally:
        conn.close()
    if "error" in answer:
        raise MoneroStartError(f"{method}: {answer['error'].get('message')}")
    return answer.get("result", {})


class _Proc:
    def __init__(self, name, argv, directory, port):
        self.name = name
        self.argv = argv
        self.directory = directory
        self.port = port
        self.logPath = os.path.join(directory, f"{name}.log")
        self.process = None

    def start(self, env):
        out = open(os.path.join(self.directory, f"{self.name}.stdout"), "wb")
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()

    def tail(self, chars=1500):
        for path in (os.path.join(self.directory, f"{self.name}.stdout"), self.logPath):
            try:
                with open(path, errors="replace") as f:
                    text = f.read()[-chars:]
                if text.strip():
                    return text
            except FileNotFoundError:
                pass
        return ""

    def waitReady(self, method, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise MoneroStartError(f"{self.name} exited with {self.process.returncode}: {self.tail()}")
            try:
                return callSync(self.port, method, timeout=5)
            except MoneroStartError:
                if time.monotonic() > deadline:
                    raise MoneroStartError(f"{self.name} not answering after {timeout:.0f}s: {self.tail()}") from None
                time.sleep(0.2)

    def stop(self, timeout=20.0):
        p = self.process
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class MoneroRegtest:
    """
    A regtest daemon and one wallet RPC server per name in C{wallets}.

    After L{start}: C{daemonPort}, C{walletPorts[name]}, C{addresses[name]}
    (each wallet created empty), and C{timings} (seconds per step).
    """

    def __init__(self, wallets=("issuer", "user"), base=None):
        self.walletNames = list(wallets)
        self.base = base
        self.daemon = None
        self.wallets = {}
        self.walletPorts = {}
        self.addresses = {}
        self.timings = {}
        self.daemonPort = None

    def _env(self):
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        env["HOME"] = self.base
        return env

    def start(self, timeout=120.0):
        reason = available()
        if reason:
            raise MoneroStartError(reason)
        if self.base is None:
            self.base = tempfile.mkdtemp(prefix="meshvpn-monero-")
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout):
        started = time.monotonic()
        daemonDir = os.path.join(self.base, "monerod")
        os.makedirs(daemonDir, mode=0o700)
        self.daemonPort = freePort()
        argv = [
            MONEROD, "--regtest", "--offline", "--fixed-difficulty", "1", "--non-interactive",
            "--no-igd", "--hide-my-port", "--out-peers", "0", "--in-peers", "0",
            "--p2p-bind-ip", "127.0.0.1", "--p2p-bind-port", str(freePort()),
            "--rpc-bind-ip", "127.0.0.1", "--rpc-bind-port", str(self.daemonPort), "--rpc-ssl", "disabled",
            "--no-zmq", "--disable-dns-checkpoints", "--check-updates", "disabled",
            "--data-dir", daemonDir, "--log-file", os.path.join(daemonDir, "monerod.log"), "--log-level", "0",
            "--max-concurrency", "1", "--prep-blocks-threads", "1", "--db-sync-mode", "fastest:async:1000",
        ]
        self.daemon = _Proc("monerod", argv, daemonDir, self.daemonPort)
        self.daemon.start(self._env())
        self.daemon.waitReady("get_info", timeout)
        self.timings["monerod_start_s"] = round(time.monotonic() - started, 2)
        for name in self.walletNames:
            t0 = time.monotonic()
            wdir = os.path.join(self.base, f"wallet-{name}")
            os.makedirs(wdir, mode=0o700)
            port = freePort()
            argv = [
                WALLET_RPC, "--daemon-address", f"127.0.0.1:{self.daemonPort}", "--trusted-daemon",
                "--daemon-ssl", "disabled", "--rpc-ssl", "disabled", "--no-dns",
                "--rpc-bind-ip", "127.0.0.1", "--rpc-bind-port", str(port), "--disable-rpc-login",
                "--wallet-dir", wdir, "--shared-ringdb-dir", os.path.join(wdir, "ringdb"),
                "--log-file", os.path.join(wdir, "wallet.log"), "--log-level", "0",
                "--non-interactive", "--max-concurrency", "1",
            ]
            proc = self.wallets[name] = _Proc(f"wallet-{name}", argv, wdir, port)
            proc.start(self._env())
            self.walletPorts[name] = port
            proc.waitReady("get_version", timeout)
            callSync(port, "create_wallet", {"filename": name, "password": "", "language": "English"})
            # Background refreshes can keep monero-wallet-rpc from answering for minutes (a known
            # 0.18 behaviour under load); users of these wallets refresh when they need to.
            callSync(port, "auto_refresh", {"enable": False})
            self.addresses[name] = callSync(port, "get_address", {"account_index": 0})["address"]
            self.timings[f"wallet_{name}_start_s"] = round(time.monotonic() - t0, 2)

    def daemonURL(self):
        return f"http://127.0.0.1:{self.daemonPort}/json_rpc"

    def walletURL(self, name):
        return f"http://127.0.0.1:{self.walletPorts[name]}/json_rpc"

    def mineSync(self, blocks, to="user", batch=MINE_BATCH):
        """
        Mine C{blocks} blocks to wallet C{to} (blocking), C{batch} per call:
        on a loaded machine 120 in one call outlasted the RPC timeout.
        @return: the new height.
        """
        t0 = time.monotonic()
        left = blocks
        while left > 0:
            n = min(batch, left)
            height = callSync(self.daemonPort, "generateblocks", {"amount_of_blocks": n, "wallet_address": self.addresses[to]})["height"]
            left -= n
        self.timings[f"mine_{blocks}_s"] = round(time.monotonic() - t0, 2)
        return height

    def fundSync(self, to="user", blocks=FUND_BLOCKS):
        """Mine enough blocks to C{to} that some of its coinbase outputs are spendable."""
        height = self.mineSync(blocks, to)
        callSync(self.walletPorts[to], "refresh")
        return height

    def stop(self):
        for proc in list(self.wallets.values()) + ([self.daemon] if self.daemon else []):
            proc.stop()
        if self.base and os.path.isdir(self.base):
            shutil.rmtree(self.base, ignore_errors=True)


class SharedRegtest:
    """
    One funded regtest network shared by the tests of a module (starting one
    takes ten seconds or more, so each test must not start its own).

    C{get(testCase)} starts it on first use (skipping the test if Monero is
    not installed, failing it under CI=true).  It stops once C{expected}
    tests have finished with it (set it to the number of tests in the
    module that use it), or at exit when only some of them ran.
    """

    def __init__(self, wallets=("issuer", "user"), fund="user", expected=None):
        self.walletNames = wallets
        self.fund = fund
        self.expected = expected
        self.net = None
        self.error = None
        self.finished = 0

    def get(self, testCase):
        from unittest import SkipTest

        from meshvpn.tools.netns import inCI

        reason = available()
        if reason:
            if inCI():
                testCase.fail(f"{reason} (CI=true: the Monero tests must run, not skip)")
            raise SkipTest(reason)
        if self.error is not None:
            testCase.fail(f"the shared Monero regtest network failed to start: {self.error}")
        if self.net is None:
            import atexit

            net = MoneroRegtest(self.walletNames)
            try:
                net.start()
                if self.fund:
                    net.fundSync(self.fund)
            except MoneroStartError as e:
                self.error = str(e)
                raise
            atexit.register(net.stop)
            self.net = net
        testCase.addCleanup(self._done)
        return self.net

    def _done(self):
        self.finished += 1
        if self.expected is not None and self.finished >= self.expected and self.net is not None:
            self.net.stop()
            self.net = None
