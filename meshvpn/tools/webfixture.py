"""A small local HTTP server for `meshvpn testnet` and the benchmarks.

`GET /bytes/N` returns N deterministic pseudo-random bytes (the same N always
gives the same body, so a fetcher checks them with L{expectedDigest} without
a copy); `GET /` returns a short page.  Bodies are streamed by a producer,
never held whole.  It logs each request's peer address, so a test can see
from where (which exit) a fetch came.

Run it as ``python -m meshvpn.tools.webfixture --listen tcp:0:interface=127.0.0.1 --port-file F``.
"""

import argparse
import hashlib
import random
import sys

from twisted.internet import endpoints, interfaces, reactor
from twisted.web import resource, server
from zope.interface import implementer

BLOCK = random.Random(20261125).randbytes(1 << 16)
MAX_BYTES = 1 << 34
PAGE = b"<html><body><h1>Hello from the MeshVPN test web</h1></body></html>\n"


def body(n):
    """The whole body of /bytes/N (for small N; use L{expectedDigest} for big ones)."""
    full, rest = divmod(n, len(BLOCK))
    return BLOCK * full + BLOCK[:rest]


def expectedDigest(n):
    h = hashlib.sha256()
    full, rest = divmod(n, len(BLOCK))
    for _ in range(full):
        h.update(BLOCK)
    h.update(BLOCK[:rest])
    return h.hexdigest()


@implementer(interfaces.IPushProducer)
class _BlockProducer:
    def __init__(self, request, n):
        self.request, self.left, self.paused = request, n, False
        request.registerProducer(self, True)
        reactor.callLater(0, self._go)

    def _go(self):
        while not self.paused and self.left > 0:
            chunk = BLOCK if self.left >= len(BLOCK) else BLOCK[: self.left]
            self.left -= len(chunk)
            self.request.write(chunk)
        if self.left == 0 and self.request is not None:
            request, self.request = self.request, None
            request.unregisterProducer()
            request.finish()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        if self.request is not None:
            self._go()

    def stopProducing(self):
        self.left, self.request = 0, None


class Bytes(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        try:
            n = int(request.postpath[0])
            if not 0 <= n <= MAX_BYTES:
                raise ValueError
        except (IndexError, ValueError):
            request.setResponseCode(400)
            return b"bad size\n"
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(n).encode())
        _BlockProducer(request, n)
        return server.NOT_DONE_YET


class Root(resource.Resource):
    def __init__(self):
        super().__init__()
        self.putChild(b"bytes", Bytes())

    def getChild(self, path, request):
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/html")
        return PAGE


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="tcp:0:interface=127.0.0.1")
    parser.add_argument("--port-file", required=True, help="write the bound port here once listening")
    args = parser.parse_args(argv)

    site = server.Site(Root())
    site.log = lambda request: print(
        f"webfixture: {request.getClientAddress().host} {request.method.decode()} {request.uri.decode()}", flush=True
    )

    def listening(port):
        with open(args.port_file, "w") as f:
            f.write(str(port.getHost().port))

    d = endpoints.serverFromString(reactor, args.listen).listen(site)
    d.addCallbacks(listening, lambda f: (print(f"webfixture: {f.getErrorMessage()}", file=sys.stderr), reactor.stop()))
    reactor.run()


if __name__ == "__main__":
    main()
