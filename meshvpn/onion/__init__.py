"""The onion plane: cells, the ntor handshake, layered relay crypto, relay-side
switching and origin-side circuits (doc/protocol.md, doc/security.md)."""
