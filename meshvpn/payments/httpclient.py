"""One bounded HTTP request with Twisted's client: the way payments talks to wallets and issuers.

Why a helper: every answer the payments plane reads comes from a program or
a server it does not control, so each request has a timeout, each answer a
size limit, and each failure (refused, reset, timed out, too big) is one
exception type with a one-line reason.  Connections are not kept open.
"""

import io

from twisted.internet import defer, protocol
from twisted.web.client import Agent, FileBodyProducer, ResponseDone
from twisted.web.http_headers import Headers


class _BoundedBody(protocol.Protocol):
    def __init__(self, finished, limit, error):
        self.finished = finished
        self.limit = limit
        self.error = error
        self.parts = []
        self.size = 0

    def dataReceived(self, data):
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.parts = []
            self.transport.stopProducing()
            self.finished.errback(self.error(f"answer larger than {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason):
        if self.finished.called:
            return
        if reason.check(ResponseDone):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(self.error(f"answer cut short: {reason.getErrorMessage()}"))


async def request(reactor, method, url, body=None, headers=None, timeout=60.0, limit=1 << 20, agent=None, error=IOError):
    """
    @return: C{(status code, body bytes)}.
    @raise error: with a one-line reason.
    """
    agent = agent or Agent(reactor)
    h = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
    producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
    d = agent.request(method.encode("ascii"), url.encode("ascii"), h, producer)
    d.addTimeout(timeout, reactor)
    try:
        response = await d
        finished = defer.Deferred()
        response.deliverBody(_BoundedBody(finished, limit, error))
        data = await finished.addTimeout(timeout, reactor)
    except defer.TimeoutError:
        raise error(f"no answer from {url} within {timeout:.0f}s") from None
    except error:
        raise
    except Exception as e:  # refused, reset, bad URL, ...
        raise error(f"cannot reach {url}: {e.__class__.__name__}: {e}"[:300]) from None
    return response.code, data
