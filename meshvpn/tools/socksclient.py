"""A minimal blocking SOCKS5 client for `meshvpn testnet --check` and the benchmarks.

Only what those need: CONNECT by domain name or address, no auth or
username/password (which MeshVPN uses for stream isolation), and a plain
HTTP/1.0 GET on top.  Errors are raised as the SOCKS server's own
L{meshvpn.client.socksparse.SocksError}, C{reply} holding the reply code.
"""

import socket
import struct
import time

from meshvpn.client.socksparse import Reply, SocksError


def _refused(code):
    try:
        code = Reply(code)
    except ValueError:
        return SocksError(code, f"SOCKS reply {code}: unknown")
    return SocksError(code, f"SOCKS reply {int(code)}: {code.name}")


def _recvExactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("SOCKS server closed the connection")
        data += chunk
    return data


def connect(proxy, host, port, username=None, password=None, timeout=30, early=b""):
    """
    @param early: bytes sent with the CONNECT request, before the reply (an
        application that sends optimistically, as a browser does).
    @return: a connected socket through the SOCKS5 proxy C{(host, port)}.
    """
    sock = socket.create_connection(proxy, timeout=timeout)
    try:
        if username is not None:
            sock.sendall(b"\x05\x01\x02")
        else:
            sock.sendall(b"\x05\x01\x00")
        version, method = _recvExactly(sock, 2)
        if method == 0x02:
            u, p = username.encode(), (password or "").encode()
            sock.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
            if _recvExactly(sock, 2)[1] != 0:
                raise _refused(Reply.GENERAL_FAILURE)
        elif method != 0x00:
            raise _refused(Reply.GENERAL_FAILURE)
        hostBytes = host.encode("idna")
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(hostBytes)]) + hostBytes + struct.pack(">H", port) + early)
        reply = _recvExactly(sock, 4)
        if reply[1] != 0:
            raise _refused(reply[1])
        atyp = reply[3]
        skip = {1: 4, 4: 16}.get(atyp)
        if skip is None:
            skip = _recvExactly(sock, 1)[0]
        _recvExactly(sock, skip + 2)
        return sock
    except BaseException:
        sock.close()
        raise


def httpGet(proxy, host, port, path, sink=None, **kw):
    """
    GET C{path} from C{host}:C{port} through the proxy.

    @param sink: called with each chunk of the body (default: collected).
    @return: C{(status, body or None, seconds to first body byte, total seconds)}.
    """
    started = time.monotonic()
    sock = connect(proxy, host, port, **kw)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the HTTP header ended")
            head += chunk
        ttfb = time.monotonic() - started
        header, _, rest = head.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        chunks = [] if sink is None else None
        (sink or chunks.append)(rest)
        while True:
            chunk = sock.recv(1 << 18)
            if not chunk:
                break
            (sink or chunks.append)(chunk)
    return status, (b"".join(chunks) if chunks is not None else None), ttfb, time.monotonic() - started
