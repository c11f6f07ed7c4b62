"""The link plane: authenticated, encrypted node-to-node channels carrying cells.

A link is TLS 1.3 (pyOpenSSL through Twisted's memory-BIO TLS) over a byte
stream that an L{meshvpn.interfaces.IPluggableTransport} plugin provides
(plain TCP by default).  Identity comes from Ed25519 signatures over the TLS
exporter, never from the TLS certificate.  See doc/protocol.md ("Links").

Peers behind NAT also get datagram links (L{meshvpn.link.datagram}): the
same guarantees, but lossy, on the node's one UDP socket, because that is
the socket whose NAT mapping was punched.
"""
