"""Client edge: the SOCKS5 server apps talk to."""
