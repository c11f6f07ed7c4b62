"""``meshvpn up`` and ``meshvpn down``: the VPN on and off in one command each, like wg-quick.

``up`` checks everything the VPN needs before it touches the system and, if
something is missing, says all of it on one screen (root, /dev/net/tun,
nftables, a bootstrap node that answers).  Then it starts the client as a
background process (its own session, so closing the terminal does not stop
it), waits until traffic really flows (VPN state *up*, or a built circuit
with ``--socks-only``) and prints how to use it.  A start that fails or
times out is undone before ``up`` returns.

``down`` stops that process (SIGTERM, then SIGKILL) and always runs the
same restore as ``meshvpn vpn-restore``, so the routes, resolv.conf and
nftables are as they were even after the node was killed with -9.

Where things live (root / a user):

 - config: C{/etc/meshvpn/client.toml} / C{$XDG_CONFIG_HOME/meshvpn/client.toml};
 - keys and state: C{/var/lib/meshvpn/client} / C{$XDG_DATA_HOME/meshvpn/client};
 - the running process (C{up.json}, pid file, log): C{/run/meshvpn} /
   C{$XDG_RUNTIME_DIR/meshvpn} (else the data dir).
"""

import json
import os
import signal
import sys
import time

import attrs

from meshvpn.client.bootstrapsources import BootstrapSources, probeStun
from meshvpn.config import defaultDataDir, loadToml
from meshvpn.errors import ConfigError, MeshVPNError
from meshvpn.secretfile import writeSecretFile

STATE_FILE = "up.json"
PID_FILE = "client.pid"
LOG_FILE = "client.log"


class UpError(MeshVPNError):
    """``up`` or ``down`` cannot go on; the message is what the user reads."""


@attrs.frozen
class Places:
    configFile: str
    configDir: str
    dataDir: str
    runDir: str

    @classmethod
    def choose(cls, config=None, dataDir=None, runDir=None, environ=None, root=None):
        environ = os.environ if environ is None else environ
        root = (os.geteuid() == 0) if root is None else root
        if root:
            configDir, data, run = "/etc/meshvpn", "/var/lib/meshvpn/client", "/run/meshvpn"
        else:
            configDir = os.path.join(environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "meshvpn")
            data = defaultDataDir("client")
            runtime = environ.get("XDG_RUNTIME_DIR")
            run = os.path.join(runtime, "meshvpn") if runtime else data
        configFile = os.path.abspath(config) if config else os.path.join(configDir, "client.toml")
        if config:
            configDir = os.path.dirname(configFile)
        return cls(configFile, configDir, os.path.abspath(dataDir or data), os.path.abspath(runDir or run))

    @property
    def stateFile(self):
        return os.path.join(self.runDir, STATE_FILE)


def readConfig(places):
    """The config file's values ({} if there is none).  @raise UpError: unreadable or not TOML."""
    if not os.path.exists(places.configFile):
        return {}
    try:
        return loadToml(places.configFile)
    except ConfigError as e:
        raise UpError(str(e)) from None


def problems(socksOnly, sources, environ=None, geteuid=os.geteuid, which=None, tunPath="/dev/net/tun"):
    """
    Everything missing for this mode, each as C{(what, how to fix it)}.
    Bootstrap reachability is checked separately (it takes the network).
    """
    import shutil

    which = which or shutil.which
    found = []
    if not socksOnly:
        if geteuid() != 0:
            found.append(("not root", "the VPN changes routes, DNS and the firewall: run 'sudo meshvpn up', "
                                      "or 'meshvpn up --socks-only' for SOCKS5 without root"))
        if not os.path.exists(tunPath):
            found.append((f"no {tunPath}", "load the tun module ('modprobe tun'); in a container, "
                                          "pass the device through (--device /dev/net/tun)"))
        elif geteuid() == 0 and not os.access(tunPath, os.R_OK | os.W_OK):
            found.append((f"{tunPath} not usable", "the process may not open it (device policy or permissions)"))
        if which("nft") is None:
            found.append(("nftables missing", "the kill switch needs the nft command: 'apt-get install nftables'"))
    if not sources.addresses() and not sources.savedCount():
        found.append(("no bootstrap node known", "add one: 'meshvpn bootstrap add IP:PORT' (a relay you trust), "
                                                 "or install a signed bootstrap file"))
    return found


def problemScreen(found, mode):
    lines = [f"cannot start the {mode}:", ""]
    for what, fix in found:
        lines.append(f"  x {what}")
        lines.append(f"      {fix}")
    lines += ["", "Nothing was changed on this system."]
    return "\n".join(lines)


def twistdArgv(places, settings, bootstrap, socksOnly, python=None):
    bindir = os.path.dirname(python or sys.executable)
    twistd = os.path.join(bindir, "twistd")
    argv = [twistd, "--nodaemon", f"--pidfile={os.path.join(places.runDir, PID_FILE)}",
            "--logfile", os.path.join(places.runDir, LOG_FILE), "meshvpn-client"]
    if os.path.exists(places.configFile):
        argv += ["--config", places.configFile]
    argv += ["--data-dir", places.dataDir]
    if bootstrap:
        argv += ["--bootstrap", ",".join(bootstrap)]
    if not socksOnly:
        argv += ["--tun"]
    elif settings.get("tun"):
        raise UpError(f"{places.configFile} says tun = true; --socks-only cannot turn it off (set it false)")
    return argv


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _isOurClient(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"meshvpn-client" in f.read()
    except OSError:
        return False


def readState(places):
    try:
        with open(places.stateFile) as f:
            state = json.load(f)
        int(state["pid"])
        return state
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return {"pid": 0, "damaged": True}


def _status(dataDir):
    try:
        with open(os.path.join(dataDir, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def isReady(status, socksOnly):
    if socksOnly:
        return bool((status.get("circuits") or {}).get("circuits"))
    return (status.get("tun") or {}).get("state") == "up"


def up(args, out=print, spawn=None):
    """
    @return: the exit code (0: up).  @raise UpError: the one-screen message.
    """
    import subprocess

    places = Places.choose(args.config, args.data_dir, args.run_dir)
    mode = "SOCKS5 proxy" if args.socks_only else "VPN"
    state = readState(places)
    if state is not None and state["pid"] and _alive(state["pid"]) and _isOurClient(state["pid"]):
        raise UpError(f"already up (pid {state['pid']}, {state.get('mode', '?')}); 'meshvpn down' first")
    if state is not None:
        out("the last run did not stop cleanly; restoring first")
        for line in _restore(places, state):
            out(f"  {line}")
    settings = readConfig(places)
    sources = BootstrapSources(places.configDir, places.dataDir, settings, extraFile=args.bootstrap_file)
    found = problems(args.socks_only, sources)
    if not found and args.probe > 0:
        answered, tried = probeStun(sources.probeTargets(), args.probe)
        if not answered:
            shown = ", ".join(tried[:4]) + (" ..." if len(tried) > 4 else "")
            found.append(("no bootstrap node reachable", f"none of {len(tried)} answered in {args.probe:g} s ({shown}); "
                                                          "check the network, or add a node: 'meshvpn bootstrap add IP:PORT'"))
    if found:
        raise UpError(problemScreen(found, mode))

    os.makedirs(places.runDir, mode=0o700, exist_ok=True)
    os.makedirs(places.dataDir, mode=0o700, exist_ok=True)
    argv = twistdArgv(places, settings, sources.addressStrings(), args.socks_only)
    log = open(os.path.join(places.runDir, LOG_FILE), "ab")
    with log:
        proc = (spawn or subprocess.Popen)(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
    state = {"pid": proc.pid, "mode": "socks-only" if args.socks_only else "vpn", "data_dir": places.dataDir,
             "resolv_conf": settings.get("resolv-conf", "/etc/resolv.conf"), "config": places.configFile,
             "started": time.time()}
    writeSecretFile(places.stateFile, json.dumps(state, indent=1).encode())
    out(f"meshvpn up: starting the {mode} (pid {proc.pid}, log {os.path.join(places.runDir, LOG_FILE)})")
    deadline = time.monotonic() + args.wait
    status = {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _logTail(places)
            _stop(places, state, out=lambda line: None)
            raise UpError(f"the client exited ({proc.returncode}) while starting:\n{tail}")
        status = _status(places.dataDir)
        if isReady(status, args.socks_only):
            out(_upScreen(status, settings, args.socks_only))
            return 0
        time.sleep(0.25)
    why = _notReady(status, args.socks_only)
    _stop(places, state, out=lambda line: None)
    raise UpError(f"not up after {args.wait:g} s: {why}.  Everything was undone.  Log: "
                  f"{os.path.join(places.runDir, LOG_FILE)}")


def _notReady(status, socksOnly):
    contacts = (status.get("dht") or {}).get("contacts")
    if contacts == 0:
        return "no bootstrap node answered the DHT"
    tun = status.get("tun") or {}
    if not socksOnly and tun.get("detail"):
        return f"VPN {tun.get('state')}: {tun['detail']}"
    return "no circuit could be built yet"


def _upScreen(status, settings, socksOnly):
    socks = (status.get("node") or {}).get("socks") or settings.get("socks-listen", "127.0.0.1:1080")
    tun = status.get("tun") or {}
    lines = []
    if socksOnly:
        lines.append(f"meshvpn is up: SOCKS5 on {socks} (this machine's other traffic is not touched)")
    else:
        dev = (tun.get("tun") or {}).get("name", "the TUN")
        lines.append(f"meshvpn is up: all IPv4 goes through {dev} ({tun.get('address')}); DNS through the exit; "
                     f"SOCKS5 also on {socks}")
        if tun.get("address6"):
            lines.append(f"IPv6 goes through it too ({tun['address6']}); exits without IPv6 refuse it at once")
        else:
            lines.append("IPv6 is blocked while up (the kill switch drops it rather than let it leak)")
    lines.append("turn it off with: meshvpn down")
    return "\n".join(lines)


def _logTail(places, chars=1500):
    try:
        with open(os.path.join(places.runDir, LOG_FILE), errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


def _restore(places, state):
    from meshvpn.client.vpncli import restoreAll

    if state.get("mode") == "socks-only":
        return []
    return restoreAll(state.get("data_dir") or places.dataDir, state.get("resolv_conf") or "/etc/resolv.conf")


def _stop(places, state, out, timeout=20.0):
    pid = state.get("pid") or 0
    if pid and _alive(pid) and _isOurClient(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            out(f"pid {pid} did not stop in {timeout:g} s: killed")
        _reap(pid)
        out(f"stopped the client (pid {pid})")
    done = _restore(places, state)
    for name in (STATE_FILE, PID_FILE):
        try:
            os.unlink(os.path.join(places.runDir, name))
        except FileNotFoundError:
            pass
    return done


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def down(args, out=print):
    places = Places.choose(args.config, args.data_dir, args.run_dir)
    state = readState(places)
    if state is None:
        # Nothing recorded: a crashed --tun client may still have left its
        # kill switch; only root can see and undo that.
        out("meshvpn down: not up" + ("; checking for leftovers anyway" if os.geteuid() == 0 else ""))
        state = {"pid": 0, "mode": "vpn" if os.geteuid() == 0 else "socks-only"}
    for line in _stop(places, state, out) or []:
        out(f"  {line}")
    out("meshvpn is down")
    return 0
