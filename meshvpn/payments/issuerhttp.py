"""The issuer's HTTP API (twisted.web): info, purchases, signing, redeeming.

Why HTTP: RFC 9578 issuance is an HTTP exchange of TokenRequest and
TokenResponse bodies, wallets and exits are ordinary HTTP clients, and a
buyer can reach it through any proxy (a MeshVPN circuit included).

  GET  /v1/info                      price, packs, confirmations, epoch keys (JSON)
  POST /v1/purchases                 {"tokens": N} -> id, subaddress, amount (JSON, 201)
  GET  /v1/purchases/ID              state, amount seen/confirmed, confirmations (JSON)
  POST /v1/purchases/ID/tokens       N TokenRequests -> N TokenResponses (RFC 9578 media types)
  POST /v1/redeem                    up to 64 tokens -> one status byte each (exits)

Every request is bounded: bodies past a limit cut the connection, idle
connections time out, purchases are admitted per client address from a
token bucket.  There is no access log: a purchase's URL carries its id,
which is a bearer secret.  Errors are JSON C{{"error": "..."}} with a
status that says which kind.
"""

import json
import re

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from meshvpn.payments import tokens
from meshvpn.payments.issuer import MAX_REDEEM, PurchaseError
from meshvpn.ratelimit import BucketTable

MAX_BODY = 64 * 1024
_PURCHASE_ID = re.compile(rb"\A[0-9a-f]{32}\Z")
REQUEST_TYPE = b"application/private-token-request"
RESPONSE_TYPE = b"application/private-token-response"


class LimitedRequest(server.Request):
    """A request whose body is cut off (connection closed) past C{MAX_BODY} bytes."""

    maxBody = MAX_BODY

    def gotLength(self, length):
        self._bodySeen = 0
        super().gotLength(length if length is None or length <= self.maxBody else 0)

    def handleContentChunk(self, data):
        self._bodySeen = getattr(self, "_bodySeen", 0) + len(data)
        if self._bodySeen > self.maxBody:
            self.channel.transport.abortConnection()
            return
        super().handleContentChunk(data)


class QuietSite(server.Site):
    """No access log (URLs hold purchase ids), no factory chatter, short idle timeout."""

    noisy = False
    requestFactory = LimitedRequest

    def __init__(self, root, timeout=30):
        super().__init__(root, timeout=timeout)

    def log(self, request):
        pass


class IssuerAPI(resource.Resource):
    """
    @param issuer: the L{meshvpn.payments.issuer.IssuerService}.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, reactor, issuer, purchaseRate=0.5, purchaseBurst=20, maxClients=10000):
        super().__init__()
        self.reactor = reactor
        self.issuer = issuer
        self.admission = BucketTable(reactor, purchaseRate, purchaseBurst, maxClients)

    # -- plumbing

    def _json(self, request, body, status=200):
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode()

    def _error(self, request, status, message):
        return self._json(request, {"error": message}, status)

    def _later(self, request, d):
        finished = []
        request.notifyFinish().addBoth(finished.append)

        def write(body):
            if not finished:
                request.write(body)
                request.finish()

        def failed(f):
            if f.check(PurchaseError):
                write(self._error(request, f.value.status, str(f.value)))
            else:
                self.log.failure("issuer API: request failed", f)
                write(self._error(request, 500, "internal error"))

        d.addCallbacks(write, failed)
        return server.NOT_DONE_YET

    def _body(self, request):
        return request.content.read(MAX_BODY + 1)

    # -- routes

    def render_GET(self, request):
        path = request.postpath
        if path == [b"v1", b"info"]:
            return self._json(request, self.issuer.info())
        if len(path) == 3 and path[:2] == [b"v1", b"purchases"] and _PURCHASE_ID.match(path[2]):
            try:
                return self._json(request, self.issuer.status(path[2].decode("ascii")))
            except PurchaseError as e:
                return self._error(request, e.status, str(e))
        return self._error(request, 404, "no such resource")

    def render_POST(self, request):
        path = request.postpath
        if path == [b"v1", b"purchases"]:
            return self._purchase(request)
        if len(path) == 4 and path[:2] == [b"v1", b"purchases"] and path[3] == b"tokens" and _PURCHASE_ID.match(path[2]):
            try:
                out = self.issuer.sign(path[2].decode("ascii"), self._body(request))
            except PurchaseError as e:
                return self._error(request, e.status, str(e))
            request.setHeader(b"content-type", RESPONSE_TYPE)
            return out
        if path == [b"v1", b"redeem"]:
            body = self._body(request)
            if not body or len(body) % tokens.TOKEN_LEN or len(body) > MAX_REDEEM * tokens.TOKEN_LEN:
                return self._error(request, 422, f"1 to {MAX_REDEEM} tokens of {tokens.TOKEN_LEN} bytes")
            parts = [body[i:i + tokens.TOKEN_LEN] for i in range(0, len(body), tokens.TOKEN_LEN)]
            request.setHeader(b"content-type", b"application/octet-stream")
            return self.issuer.redeem(parts)
        return self._error(request, 404, "no such resource")

    def _purchase(self, request):
        host = getattr(request.getClientAddress(), "host", "?")
        if not self.admission.tryConsume(host):
            return self._error(request, 429, "too many purchases from this address; try later")
        try:
            asked = json.loads(self._body(request) or b"{}")
            count = asked["tokens"]
            if isinstance(count, bool) or not isinstance(count, int):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self._error(request, 400, 'expected a JSON body {"tokens": N}')
        d = defer.maybeDeferred(self.issuer.quote, count)

        def quoted(result):
            purchaseId, p = result
            body = {"purchase": purchaseId, **p.public(self.issuer.terms.confirmations),
                    "signature": self.issuer.signPurchase(purchaseId, p)}
            return self._json(request, body, 201)

        return self._later(request, d.addCallback(quoted))
