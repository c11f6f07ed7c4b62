"""`meshvpn testnet`: a complete local MeshVPN network of real twistd processes on loopback.

Everything lives in a temporary directory that is removed on exit.  Today the
network is one relay and one client (the DHT, circuits and exits join it as
they are built); `--check` starts it, shows every node, and stops it again.
"""

import shutil
import tempfile
import time

from meshvpn.processes import NodeProcess


def run(args, out):
    started = time.monotonic()
    base = tempfile.mkdtemp(prefix="meshvpn-testnet-")
    nodes = [NodeProcess("relay", f"{base}/relay1", name="relay1"), NodeProcess("client", f"{base}/client", name="client")]
    try:
        for node in nodes:
            out(f"testnet: starting {node.name} ({node.role}) ...")
            node.start()
        for node in nodes:
            info = node.waitReady()
            where = " ".join(f"{k}={info[k]}" for k in ("udp", "stream") if k in info)
            out(f"testnet: {node.name:8} {node.role:7} id {info['node_id'][:16]}…  {where}")
        out(f"testnet: {len(nodes)} nodes up in {time.monotonic() - started:.2f}s (data in {base})")
        if not args.check:
            out("testnet: running; press Ctrl-C to stop")
            try:
                while all(n.process.poll() is None for n in nodes):
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        codes = {n.name: n.stop() for n in nodes}
        shutil.rmtree(base, ignore_errors=True)
        out("testnet: stopped " + ", ".join(f"{k} (exit {v})" for k, v in codes.items()))
