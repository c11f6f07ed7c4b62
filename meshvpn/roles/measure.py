"""Wiring of peer-measured bandwidth: a relay meters its links and reports, a client weighs relays by the reports."""

from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.measure.meter import TrafficMeter
from meshvpn.measure.publish import ReportPublisher
from meshvpn.measure.service import MeasuredWeights, inThread
from meshvpn.roles.common import addService


def addTrafficReports(node, settings, links, switch, dht):
    """
    Put a L{TrafficMeter} between C{links} and the onion C{switch} and add
    the C{"measure"} service that signs and publishes a report per epoch.
    @return: the publisher.
    """
    meter = TrafficMeter(switch, CELL_SIZE)
    links.setCellHandler(meter)
    publisher = ReportPublisher(node.reactor, node.identity, dht.everyFamily, meter, settings["measure_epoch"])
    addService(dht, "measure", publisher)
    node.status.addSource("measure", publisher)
    return publisher


def addMeasuredWeights(node, settings, dht, finder):
    """The client's C{"weights"} service: reads the reports of the relays C{finder} knows, each epoch."""
    weights = MeasuredWeights(node.reactor, dht.everyFamily, lambda: {i: d.flags for i, d in finder.relays.items()}, settings["measure_epoch"],
                              dataDir=node.dataDir, compute=inThread(node.reactor))
    addService(dht, "weights", weights)
    node.status.addSource("weights", weights)
    return weights
