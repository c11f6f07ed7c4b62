# Drop-in: lists ``twistd meshvpn-issuer``; the role module is imported only when used.
from twisted.application.service import ServiceMaker

meshvpnIssuer = ServiceMaker("MeshVPN issuer", "meshvpn.roles.issuer", "A MeshVPN bandwidth token issuer.", "meshvpn-issuer")
