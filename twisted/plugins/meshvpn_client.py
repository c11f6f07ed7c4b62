# Drop-in: lists ``twistd meshvpn-client``; the role module is imported only when used.
from twisted.application.service import ServiceMaker

meshvpnClient = ServiceMaker("MeshVPN client", "meshvpn.roles.client", "A MeshVPN client node.", "meshvpn-client")
