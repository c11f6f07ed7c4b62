# Drop-in: lists ``twistd meshvpn-relay``; the role module is imported only when used.
from twisted.application.service import ServiceMaker

meshvpnRelay = ServiceMaker("MeshVPN relay", "meshvpn.roles.relay", "A MeshVPN relay node.", "meshvpn-relay")
