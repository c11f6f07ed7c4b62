"""`bench tun`'s downloads are checked: a transfer cut short or with other bytes fails (no root needed)."""

import shutil
import socket
import threading

from twisted.trial import unittest

from meshvpn.tools import webfixture
from meshvpn.tools.benchtun import DownloadError, _download


class _OneShotServer:
    """Answers one HTTP request with C{header + body}, then holds or closes the connection."""

    def __init__(self, testCase, body, length, hold):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()
        testCase.addCleanup(self.close)

        def serve():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % length + body)
                if hold:
                    self.done.wait(30)

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def close(self):
        self.done.set()
        self.sock.close()
        self.thread.join(30)


class DownloadCheckTests(unittest.TestCase):
    def setUp(self):
        if shutil.which("curl") is None:
            raise unittest.SkipTest("curl not installed")

    def url(self, server, n):
        return f"http://127.0.0.1:{server.port}/bytes/{n}"

    def test_good(self):
        server = _OneShotServer(self, webfixture.body(5000), 5000, hold=False)
        got, seconds = _download(None, self.url(server, 5000), 5000)
        self.assertEqual(got, 5000)

    def test_cutByTimeLimitFails(self):
        """Half the body, then silence until curl's --max-time: not a throughput, a failure."""
        server = _OneShotServer(self, webfixture.body(5000)[:2500], 5000, hold=True)
        self.assertRaises(DownloadError, _download, None, self.url(server, 5000), 5000, timeout=1)

    def test_otherBytesFail(self):
        server = _OneShotServer(self, bytes(5000), 5000, hold=False)
        self.assertRaises(DownloadError, _download, None, self.url(server, 5000), 5000)

    def test_shortBodyFails(self):
        server = _OneShotServer(self, webfixture.body(4000), 4000, hold=False)
        self.assertRaises(DownloadError, _download, None, self.url(server, 5000), 5000)
