# Drop-in: MeshVPN's built-in link transport(s), found with
# getPlugins(IPluggableTransport).  Light: only small classes are imported.
from meshvpn.link.transports import DatagramTransport, TCPTransport

meshvpnTLS = TCPTransport()
meshvpnUDP = DatagramTransport()
