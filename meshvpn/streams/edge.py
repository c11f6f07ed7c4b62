"""Glue between circuits and the stream layer (L{meshvpn.streams.mux}).

At the origin, L{attachStreams} gives an L{OriginCircuit} a StreamMux; at
the exit, L{StreamExitEdge} is the switch's L{ICircuitEdge}: one StreamMux per
circuit (kept in C{circuit.edgeState}) for stream cells, and a packet sink for
packet mode.  Circuit-level flow control stays in the circuit; the mux asks
C{circuitRoom()} before DATA and is told when a SENDME reopens the window.
"""

from zope.interface import implementer

from meshvpn.interfaces import ICircuitEdge
from meshvpn.onion.flow import FLOW_EARLY, FLOW_XON
from meshvpn.streams.multipathexit import MultipathExit
from meshvpn.streams.mux import StreamMux


def attachStreams(circuit):
    """
    Give an origin circuit its stream layer. @return: the L{StreamMux}.
    DATA cells carry what the circuit's last hop takes (C{maxData}: 494,
    or 488 when that hop uses CGO relay crypto), read when data is sent:
    the stream layer is attached before the circuit is built.
    """
    mux = StreamMux(circuit.sendRelay, lambda: circuit.maxData, circuitRoom=circuit.circuitRoom,
                    xon=lambda: circuit.flowFlags & FLOW_XON, sendData=circuit.sendDataRun,
                    early=lambda: circuit.flowFlags & FLOW_EARLY)
    circuit.streamHandler = mux
    return mux


@implementer(ICircuitEdge)
class StreamExitEdge:
    """
    @param accept: C{callable(circuit, host, port)} returning (a Deferred of)
        the L{meshvpn.interfaces.IStream} connected to the target (the
        mux's C{accept} with the circuit first): the exit policy, the
        outgoing connection and the circuit's throttle live there.
    @param resolve: C{callable(circuit, name)} for RESOLVE, or C{None}.
    @param packetSink: C{callable(circuit, packets)} for packet mode, or
        C{None} (packets dropped).
    @param multipath: circuits may be linked into multipath sets
        (L{meshvpn.streams.multipathexit}).
    """

    def __init__(self, accept, resolve=None, packetSink=None, multipath=True):
        self._multipath = MultipathExit() if multipath else None
        self._accept = accept
        self._resolve = resolve
        self._packetSink = packetSink

    def _mux(self, circuit):
        mux = circuit.edgeState
        if mux is None:
            accept, resolve = self._accept, self._resolve

            def acceptOnCircuit(host, port):
                return accept(circuit, host, port)

            def resolveOnCircuit(name):
                return resolve(circuit, name)

            mux = circuit.edgeState = StreamMux(
                circuit.sendRelay, circuit.maxData, acceptOnCircuit, resolve and resolveOnCircuit,
                circuitRoom=circuit.circuitRoom,
                xon=lambda: circuit.flowFlags & FLOW_XON, sendData=getattr(circuit, "sendDataRun", None),
                early=lambda: circuit.flowFlags & FLOW_EARLY,
            )
            if self._multipath is not None:
                self._multipath.attach(circuit, mux)
        return mux

    def relayReceived(self, circuit, command, streamId, data):
        self._mux(circuit).relayReceived(command, streamId, data)

    def circuitWindowOpened(self, circuit):
        if circuit.edgeState is not None:
            circuit.edgeState.circuitWindowOpened()

    def packetsReceived(self, circuit, packets):
        if self._packetSink is not None:
            self._packetSink(circuit, packets)

    def circuitClosed(self, circuit, reason):
        if circuit.edgeState is not None:
            circuit.edgeState.circuitClosed()
