"""Where a client's first DHT contacts come from, in the order they are trusted.

 1. the C{bootstrap} key of the client's config file;
 2. addresses the user added (C{meshvpn bootstrap add}), one per line in
    C{bootstrap-nodes} in the config directory;
 3. signed bootstrap files (L{meshvpn.client.bootstrapfile}): the one
    shipped with the package, C{bootstrap.json} in the config directory, and
    one named on the command line; each must be signed by a key in a
    C{bootstrap-signers} file (package's or config directory's) and not
    expired, or it is skipped with the reason;
 4. the routing table the DHT saved on its last run (C{dht-table.json} in the
    data dir), which the DHT reads by itself: listed here, not passed on.

L{probeStun} asks each of them one STUN Binding request (every relay answers
STUN on its DHT port by default), so ``meshvpn up`` can say "no bootstrap
reachable" before it changes anything on the system.
"""

import os
import select
import socket
import time

from meshvpn.client import bootstrapfile
from meshvpn.dht.service import TABLE_FILE, loadTable, parseBootstrapList
from meshvpn.hostport import HostPortError, formatHostPort, parseIPPort
from meshvpn.nat import stun

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
NODES_FILE = "bootstrap-nodes"
SIGNED_FILE = "bootstrap.json"
SIGNERS_FILE = "bootstrap-signers"
MAX_USER_NODES = 64


class BootstrapSources:
    def __init__(self, configDir, dataDir, configValues=None, extraFile=None, packageDir=PACKAGE_DIR):
        self.configDir = configDir
        self.dataDir = dataDir
        self.configValues = configValues or {}
        self.signedFiles = [os.path.join(packageDir, SIGNED_FILE), os.path.join(configDir, SIGNED_FILE)]
        if extraFile:
            self.signedFiles.append(os.path.abspath(extraFile))
        self.signerFiles = [os.path.join(packageDir, SIGNERS_FILE), os.path.join(configDir, SIGNERS_FILE)]

    # ---- each source: rows of (source, "IP:PORT" or None, note)

    def fromConfig(self):
        raw = self.configValues.get("bootstrap", [])
        try:
            return [("config", formatHostPort(*hp), "") for hp in parseBootstrapList(raw)]
        except ValueError as e:
            return [("config", None, f"bootstrap key ignored: expected {e}")]

    def fromUser(self):
        return [("added", addr, "") for addr in readUserNodes(self.configDir)]

    def fromSigned(self):
        rows = []
        try:
            trusted = bootstrapfile.loadSigners(*self.signerFiles)
        except bootstrapfile.BootstrapFileError as e:
            return [("signed", None, f"signers: {e}")]
        for path in self.signedFiles:
            try:
                with open(path, "rb") as f:
                    data = f.read(bootstrapfile.MAX_FILE + 1)
            except FileNotFoundError:
                continue
            except OSError as e:
                rows.append(("signed", None, f"{path}: {e.strerror}"))
                continue
            try:
                network, nodes, expires = bootstrapfile.parse(data, trusted)
            except bootstrapfile.BootstrapFileError as e:
                rows.append(("signed", None, f"{path} skipped: {e}"))
                continue
            until = time.strftime("%Y-%m-%d", time.gmtime(expires))
            rows += [("signed", formatHostPort(*hp), f"network {network}, until {until}") for hp in nodes]
        return rows

    def fromSaved(self):
        return [("saved", formatHostPort(*address), nodeId.hex()[:16])
                for nodeId, address in loadTable(os.path.join(self.dataDir, TABLE_FILE))]

    def rows(self):
        return self.fromConfig() + self.fromUser() + self.fromSigned() + self.fromSaved()

    def addressStrings(self):
        """What the client is started with (sources 1-3, each address once, in trust order)."""
        seen = []
        for source, addr, _ in self.fromConfig() + self.fromUser() + self.fromSigned():
            if addr is not None and addr not in seen:
                seen.append(addr)
        return seen[:64]

    def addresses(self):
        return self.addressStrings()

    def savedCount(self):
        return len(self.fromSaved())

    def probeTargets(self, saved=16):
        targets = self.addressStrings()
        for _, addr, _ in self.fromSaved()[:saved]:
            if addr not in targets:
                targets.append(addr)
        return targets


def readUserNodes(configDir):
    try:
        with open(os.path.join(configDir, NODES_FILE), encoding="utf-8") as f:
            lines = f.read(64 * 1024).splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            out.append(formatHostPort(*parseIPPort(text, allowZero=False)))
        except HostPortError:
            continue  # a hand-edited line that is not an address: 'bootstrap list' shows the rest
    return out[:MAX_USER_NODES]


def addUserNode(configDir, text):
    """
    Append C{text} (C{IP:PORT}) to the user's list.  @return: the normalised address.
    @raise ValueError: not a literal IP:PORT, or the list is full.
    """
    from meshvpn.secretfile import writeSecretFile

    try:
        address = formatHostPort(*parseIPPort(text, allowZero=False))
    except HostPortError as e:
        raise ValueError(f"{e} (expected IP:PORT, e.g. 198.18.0.10:9000 or [2001:db8::1]:9000)") from None
    nodes = readUserNodes(configDir)
    if address in nodes:
        return address
    if len(nodes) >= MAX_USER_NODES:
        raise ValueError(f"the list already holds {MAX_USER_NODES} addresses")
    os.makedirs(configDir, mode=0o700, exist_ok=True)
    body = "# added by 'meshvpn bootstrap add': one IP:PORT per line\n" + "".join(f"{n}\n" for n in [*nodes, address])
    writeSecretFile(os.path.join(configDir, NODES_FILE), body.encode())
    return address


def probeStun(targets, timeout=3.0):
    """
    One STUN Binding request to each C{"IP:PORT"} in C{targets}, from one
    UDP socket per address family, resent once halfway.  @return:
    C{(answered, tried)}: the addresses that answered, and all tried.
    """
    pending = {}  # transaction id -> (address text, (ip, port))
    socks = {}
    tried = []
    for text in targets:
        try:
            host, port = parseIPPort(text, allowZero=False)
        except HostPortError:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if family not in socks:
            try:
                socks[family] = socket.socket(family, socket.SOCK_DGRAM)
                socks[family].setblocking(False)
            except OSError:
                continue
        message = stun.StunMessage(stun.BINDING, stun.REQUEST)
        pending[message.transactionId] = (text, (host, port), family, message.encode())
        tried.append(text)
    answered = []
    try:
        deadline = time.monotonic() + timeout
        resend = time.monotonic() + timeout / 2
        _sendAll(pending, socks)
        while pending and time.monotonic() < deadline:
            if resend is not None and time.monotonic() >= resend:
                _sendAll(pending, socks)
                resend = None
            ready, _, _ = select.select(list(socks.values()), [], [], 0.1)
            for sock in ready:
                try:
                    data, _ = sock.recvfrom(2048)
                    reply = stun.StunMessage.decode(data)
                except (OSError, stun.StunParseError):
                    continue
                entry = pending.pop(reply.transactionId, None)
                if entry is not None and reply.cls == stun.SUCCESS:
                    answered.append(entry[0])
    finally:
        for sock in socks.values():
            sock.close()
    return answered, tried


def _sendAll(pending, socks):
    for text, address, family, data in pending.values():
        try:
            socks[family].sendto(data, address)
        except OSError:
            pass  # unreachable network: that address simply does not answer
