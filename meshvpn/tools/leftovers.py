"""What a killed test run leaves behind, the next run cleans up.

A test's cleanups stop its node processes and delete its namespaces, but a
run killed with ``kill -9`` (or by CI's time limit) runs no cleanup: its
``twistd`` nodes keep their ports and its namespaces keep their veths,
routes and processes, and the next run trips over them.

- Node processes are started with ``PR_SET_PDEATHSIG``: the kernel kills
  them when the process that started them dies, however it dies.
- Namespaces outlive every process, so each is recorded (a file named after
  it, holding the pid and start time of the process that made it); making
  a new one first deletes those whose maker is gone.
"""

import ctypes
import json
import os
import signal

RECORDS = os.environ.get("MESHVPN_NETNS_RECORDS", "/run/meshvpn-test-netns")
_PR_SET_PDEATHSIG = 1


def dieWithParent():
    """A C{preexec_fn}: SIGKILL this child when its parent dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: cleanups alone


def _startTime(pid):
    """The process's start time in clock ticks since boot, or C{None} if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields follow the last ')'
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def remember(name):
    """Record namespace C{name} as made by this process."""
    os.makedirs(RECORDS, mode=0o700, exist_ok=True)
    path = os.path.join(RECORDS, name)
    with open(path + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "start": _startTime(os.getpid())}, f)
    os.replace(path + ".tmp", path)


def forget(name):
    try:
        os.unlink(os.path.join(RECORDS, name))
    except FileNotFoundError:
        pass


def orphans():
    """The recorded namespaces whose maker has exited."""
    try:
        names = os.listdir(RECORDS)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if name.endswith(".tmp"):
            continue
        try:
            with open(os.path.join(RECORDS, name)) as f:
                owner = json.load(f)
            alive = _startTime(int(owner["pid"])) == owner["start"]
        except (OSError, ValueError, KeyError, TypeError):
            alive = False
        if not alive:
            found.append(name)
    return found


def reap(delete):
    """Delete every orphaned namespace with C{delete(name)}; @return: their names."""
    names = orphans()
    for name in names:
        delete(name)
        forget(name)
    return names
