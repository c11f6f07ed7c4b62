"""The load generator of ``meshvpn bench load``: one process acting as many users of a MeshVPN network.

Run as ``python -m meshvpn.tools.benchloadgen --socks H:P[,H:P] --web H:P --users N --duration S --out F``.
Users arrive spread over C{--ramp} seconds, each on one of the clients'
SOCKS ports with its own credentials (so its own circuits).  Most browse:
a burst of 1-4 parallel page fetches of 2-64 KiB, then an exponential think
time.  A few (C{--bulk}) download C{--bulk-bytes} again and again.  Every
fetch is checked byte for byte.  The result file holds every fetch's
outcome; L{summarise} turns it into the bench's numbers.
"""

import argparse
import json
import os
import random

from twisted.internet import defer, task

from meshvpn.hostport import splitHostPort
from meshvpn.tools.benchloadsocks import FetchFailed, fetch

PAGE_SIZES = (2048, 8192, 16384, 32768, 65536)


class Load:
    """The users and what happened to each of their fetches."""

    def __init__(self, reactor, socks, web, users, duration, ramp, think, bulk, bulkBytes, timeout, seed=20, probe=None, stopFile=None):
        self.reactor = reactor
        self.socks = socks
        self.web = web
        self.users = users
        self.duration = duration
        self.ramp = ramp
        self.think = think
        self.bulk = bulk
        self.bulkBytes = bulkBytes
        self.timeout = timeout
        # probe mode (the chaos bench): every user fetches 2 KiB, waits C{probe} seconds, again
        self.probe = probe
        # the chaos bench ends the run by creating this file (its script's length is not known ahead)
        self.stopFile = stopFile
        self.rng = random.Random(seed)
        self.fetches = []  # [user, start, connectS, totalS, bytes, error, first, bulk]
        self.t0 = None
        self.stopAt = None

    async def _one(self, user, size, first, bulk):
        start = self.reactor.seconds()
        try:
            connect, total, got = await fetch(self.reactor, self.socks[user % len(self.socks)], f"user{user}",
                                              self.web, size, self.timeout * (4 if bulk else 1))
            self.fetches.append([user, start - self.t0, connect, total, got, None, first, bulk])
        except FetchFailed as e:
            self.fetches.append([user, start - self.t0, None, self.reactor.seconds() - start, 0, e.kind, first, bulk])
        except Exception as e:  # a bug in the generator must show, not vanish
            self.fetches.append([user, start - self.t0, None, self.reactor.seconds() - start, 0,
                                 f"generator:{type(e).__name__}", first, bulk])

    async def _user(self, user):
        rng = random.Random(self.rng.random())
        bulk = user < self.bulk
        await task.deferLater(self.reactor, self.ramp * user / max(1, self.users))
        first = True
        while self._going():
            if self.probe is not None:
                await defer.Deferred.fromCoroutine(self._one(user, 2048, first, False))
                await task.deferLater(self.reactor, self.probe)
            elif bulk:
                await defer.Deferred.fromCoroutine(self._one(user, self.bulkBytes, first, True))
            else:
                # the first fetch opens the circuit alone (as a browser's first request); then bursts
                burst = 1 if first else rng.randint(1, 4)
                await defer.gatherResults([defer.Deferred.fromCoroutine(self._one(user, rng.choice(PAGE_SIZES), first, False))
                                           for _ in range(burst)])
                await task.deferLater(self.reactor, rng.expovariate(1.0 / self.think))
            first = False

    def _going(self):
        if self.stopFile is not None:
            return not os.path.exists(self.stopFile)
        return self.reactor.seconds() < self.stopAt

    async def run(self):
        self.t0 = self.reactor.seconds()
        self.stopAt = self.t0 + self.duration
        await defer.gatherResults([defer.Deferred.fromCoroutine(self._user(u)) for u in range(self.users)])
        return {"users": self.users, "t0_epoch": self.t0, "duration_s": self.duration, "ramp_s": self.ramp,
                "wall_s": self.reactor.seconds() - self.t0, "bulk_users": self.bulk, "fetches": self.fetches}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socks", required=True, help="comma-separated HOST:PORT of the clients' SOCKS ports")
    p.add_argument("--web", required=True, help="HOST:PORT of the web server")
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--ramp", type=float, default=20.0)
    p.add_argument("--think", type=float, default=10.0, help="mean seconds between a browsing user's bursts")
    p.add_argument("--bulk", type=int, default=3, help="users doing bulk downloads")
    p.add_argument("--bulk-bytes", type=int, default=4 << 20)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a page fetch counts as hung")
    p.add_argument("--probe", type=float, default=None, help="probe mode: 2 KiB fetches this many seconds apart")
    p.add_argument("--stop-file", default=None, help="run until this file exists (instead of --duration)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    socks = [splitHostPort(s) for s in args.socks.split(",")]
    web = splitHostPort(args.web)

    def go(reactor):
        load = Load(reactor, socks, web, args.users, args.duration, args.ramp, args.think, args.bulk,
                    args.bulk_bytes, args.timeout, probe=args.probe, stopFile=args.stop_file)

        def write(result):
            with open(args.out, "w") as f:
                json.dump(result, f)

        return defer.Deferred.fromCoroutine(load.run()).addCallback(write)

    task.react(go)


if __name__ == "__main__":
    main()
