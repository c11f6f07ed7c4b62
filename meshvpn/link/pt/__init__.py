"""Managed pluggable transports: external obfuscation programs run the way Tor runs them.

A managed transport (obfs4proxy, and anything else speaking Tor's
pluggable-transport protocol, pt-spec) is a child process the node starts,
configures through environment variables, and learns the listening
addresses of from its stdout.  Links then run over it exactly as over TCP:
TLS and the identity handshake inside, so a transport only hides the bytes
and can never weaken authentication.

 - L{meshvpn.link.pt.messages}: the stdout line grammar (VERSION, CMETHOD, SMETHOD, ...).
 - L{meshvpn.link.pt.args}: the transport line (C{"obfs4 exec /usr/bin/obfs4proxy"}),
   per-connection arguments and their SOCKS packing, bridge lines.
 - L{meshvpn.link.pt.launch}: one run of the process, up to its DONE line.
 - L{meshvpn.link.pt.supervisor}: keeps it running, with backoff, until the node stops.
 - L{meshvpn.link.pt.socks}: the SOCKS5 client that reaches a client method.
 - L{meshvpn.link.pt.transport}: the L{meshvpn.interfaces.IPluggableTransport}s.
"""
