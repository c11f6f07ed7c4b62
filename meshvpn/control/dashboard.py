"""The dashboard: static files the control API serves itself, and the one-time login.

The page is plain HTML, CSS and JavaScript shipped in the package
(C{meshvpn/control/web/}): no CDN, no build step, works with no internet.
It reads the same API as the CLI (same origin, so the browser's
same-origin rules and the API's Host/Origin checks protect it) and follows
C{/v1/events} for live updates.

Login, as Jupyter's token URL: C{meshvpn dashboard} (which can read the
cookie file) asks the API for a one-time link; opening it spends the token
and sets an HttpOnly, SameSite=Strict session cookie, then redirects to the
page, so the token in the URL is worthless afterwards.  The page's headers
forbid framing, inline scripts and sending the URL as a referrer.
"""

import os

from meshvpn.control.auth import SESSION_COOKIE

WEB_DIR = os.path.join(os.path.dirname(__file__), "web")
FILES = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", b"image/svg+xml"),
}
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def render(api, request, path):
    """Serve C{path} (not under /v1) for the L{ControlResource} C{api}."""
    request.setHeader(b"content-security-policy", CSP)
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"no-referrer")
    if request.method not in (b"GET", b"HEAD"):
        return api._error(request, 405, "the dashboard's pages are read with GET")
    if path == "/login":
        return _login(api, request)
    if path not in FILES:
        return api._error(request, 404, f"no page {path}")
    name, ctype = FILES[path]
    with open(os.path.join(WEB_DIR, name), "rb") as f:
        body = f.read()
    request.setHeader(b"content-type", ctype)
    return body


def _login(api, request):
    token = (request.args.get(b"token") or [b""])[0].decode("ascii", "replace")
    session = api.guard.redeem(token)
    if session is None:
        request.setResponseCode(401)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (b"This login link was already used or has expired.\n"
                b"Run `meshvpn dashboard --data-dir DIR` for a new one.\n")
    request.addCookie(SESSION_COOKIE.encode(), session.encode(), path=b"/", httpOnly=True, sameSite="strict")
    request.setResponseCode(303)
    request.setHeader(b"location", b"/")
    return b""
