"""Who may use the control API: whoever can read the cookie file, from a page the node served itself.

Tor's CookieAuthentication is the anchor: on every start the node writes
32 random bytes (hex) to C{control.cookie} in its data dir, 0600 and
atomically, so exactly the users who may read the data dir may steer the
node.  A request proves it with C{Authorization: Bearer <cookie>} (the CLI)
or with a browser session cookie that a one-time login link set (the
dashboard; the link's token is good once and for a few minutes, so the URL
in a terminal or the browser's history opens nothing later).

Before any of that, a request must be addressed to the node itself: its
C{Host} must be the address the API listens on (a DNS-rebinding page at
C{evil.example} resolving to 127.0.0.1 sends C{Host: evil.example}), and an
C{Origin} or C{Sec-Fetch-Site} header, when present, must say the request
comes from the node's own pages (a tab on another site sending a request
to the API gets 403 before the cookie is even looked at).
"""

import hmac
import os
import secrets

from meshvpn.secretfile import writeSecretFile

COOKIE_FILE = "control.cookie"
SESSION_COOKIE = "meshvpn_session"
LOGIN_TOKEN_LIFETIME = 600.0  # seconds a one-time login link works
MAX_SESSIONS = 64
MAX_LOGIN_TOKENS = 16


def writeCookie(dataDir):
    """A fresh cookie in C{dataDir} (0600, atomic). @return: its hex text."""
    cookie = secrets.token_hex(32)
    writeSecretFile(os.path.join(dataDir, COOKIE_FILE), cookie.encode() + b"\n")
    return cookie


def readCookie(dataDir):
    """
    @return: the cookie a running node wrote in C{dataDir}.
    @raise OSError: no cookie there (no node running, or not ours to read).
    """
    from meshvpn.secretfile import readSecretFile

    return readSecretFile(os.path.join(dataDir, COOKIE_FILE)).decode().strip()


def removeCookie(dataDir):
    try:
        os.unlink(os.path.join(dataDir, COOKIE_FILE))
    except FileNotFoundError:
        pass


class Guard:
    """
    The API's checks, in order: the request is for us (else 403), then it
    is authenticated (else 401).

    @param clock: an C{IReactorTime}.
    @param cookie: the control cookie (hex text).
    """

    def __init__(self, clock, cookie):
        self.clock = clock
        self.cookie = cookie
        self.hosts = set()  # acceptable Host header values, lower case
        self._sessions = {}  # session token -> created
        self._logins = {}  # one-time token -> expiry

    def listeningOn(self, host, port):
        """The API listens on C{host}:C{port}: requests must name exactly that (or localhost on 127.0.0.1)."""
        self.hosts = {f"{host}:{port}".lower()}
        if ":" in host:
            self.hosts = {f"[{host}]:{port}".lower()}
        if host in ("127.0.0.1", "::1"):
            self.hosts.add(f"localhost:{port}")

    def origins(self):
        return {f"http://{h}" for h in self.hosts}

    def foreign(self, request):
        """
        @return: why C{request} is not addressed to this node from its own
            pages, or C{None} if it is.
        """
        host = (request.getHeader("host") or "").lower()
        if host not in self.hosts:
            return "the Host header does not name this control API"
        origin = request.getHeader("origin")
        if origin is not None and origin.lower() not in self.origins():
            return "cross-origin requests are refused"
        site = request.getHeader("sec-fetch-site")
        if site is not None and site.lower() not in ("same-origin", "none"):
            return "cross-site requests are refused"
        return None

    def authenticated(self, request):
        auth = request.getHeader("authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and _same(token.strip(), self.cookie):
            return True
        session = request.getCookie(SESSION_COOKIE.encode())
        if session is not None:
            session = session.decode("ascii", "replace")
            return any(_same(session, s) for s in self._sessions)
        return False

    # -- the dashboard's login

    def loginToken(self):
        """A token that logs one browser in, once, within L{LOGIN_TOKEN_LIFETIME}."""
        now = self.clock.seconds()
        self._logins = {t: exp for t, exp in self._logins.items() if exp > now}
        while len(self._logins) >= MAX_LOGIN_TOKENS:
            del self._logins[min(self._logins, key=self._logins.get)]
        token = secrets.token_urlsafe(32)
        self._logins[token] = now + LOGIN_TOKEN_LIFETIME
        return token

    def redeem(self, token):
        """
        @return: a new session token if C{token} is a live login token (which
            is then spent), else C{None}.
        """
        now = self.clock.seconds()
        match = next((t for t in self._logins if _same(token, t)), None)
        if match is None:
            return None
        expiry = self._logins.pop(match)
        if expiry <= now:
            return None
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[min(self._sessions, key=self._sessions.get)]
        session = secrets.token_urlsafe(32)
        self._sessions[session] = now
        return session


def _same(a, b):
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))
