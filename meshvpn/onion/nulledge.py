"""The edge of a relay that is no exit: the switch's default L{ICircuitEdge}.

Cells that end at such a relay (someone asked a middle relay to be its
exit) are answered the way Tor answers them: BEGIN and RESOLVE with END
EXITPOLICY, packets dropped.  Exits plug their own edge into the switch.
"""

from zope.interface import implementer

from meshvpn.interfaces import ICircuitEdge
from meshvpn.onion.cells import End, RelayCommand


@implementer(ICircuitEdge)
class NullEdge:
    def relayReceived(self, circuit, command, streamId, data):
        if command in (RelayCommand.BEGIN, RelayCommand.RESOLVE):
            circuit.sendRelay(RelayCommand.END, streamId, End(4).encode())  # EXITPOLICY

    def packetsReceived(self, circuit, packets):
        pass

    def circuitWindowOpened(self, circuit):
        pass

    def circuitClosed(self, circuit, reason):
        pass
