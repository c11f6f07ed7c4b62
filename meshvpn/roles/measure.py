"""Wiring of peer-measured bandwidth: a relay meters its links, probes and reports, a client weighs relays by the reports."""

from meshvpn.dht.service import RelayFinder
from meshvpn.link.cellsize import CELL_SIZE
from meshvpn.measure.meter import TrafficMeter
from meshvpn.measure.probeservice import ProbeService
from meshvpn.measure.probesecrets import ProbeSecrets
from meshvpn.measure.publish import ReportPublisher
from meshvpn.measure.seedservice import SeedService
from meshvpn.measure.service import MeasuredWeights, inThread
from meshvpn.measure.settings import probeSecondsFor
from meshvpn.roles.common import addService

PROBE_DIRECTORY_SAMPLE = 1024  # relays per role a relay's probe plan is drawn from (the payer's sample)


def addCapacityProbes(node, settings, links, switch, dht):
    """
    The relay's C{"probes"} service (unless C{--probe-seconds} is 0; by
    default C{auto}, a share of the epoch): it handles the links' PROBE
    records, echoes its assigned measurers within the node's bandwidth
    limit and probes its targets in each epoch's slot.
    @return: the L{ProbeService} or C{None}.
    """
    if not settings.get("probe_seconds"):
        return None
    epoch = settings["measure_epoch"]
    finder = addService(dht, "probe-finder", RelayFinder(dht, min(300.0, float(epoch)), perRole=PROBE_DIRECTORY_SAMPLE))
    limiter = getattr(switch, "readLimiter", None)
    seeds = addService(dht, "probe-seeds", SeedService(node.reactor, dht.everyFamily, epoch,
                                                       lambda: dict(finder.relays), node.identity,
                                                       ProbeSecrets(node.dataDir), joined=dht.joined))
    node.status.addSource("probe_seeds", seeds)
    probes = ProbeService(node.reactor, node.identity, links, lambda: dict(finder.relays), epoch,
                          probeSecondsFor(settings["probe_seconds"], epoch),
                          bucket=None if limiter is None else limiter.bucket, seeds=seeds)
    addService(dht, "probes", probes)
    node.status.addSource("probes", probes)
    return probes


def addTrafficReports(node, settings, links, switch, dht):
    """
    Put a L{TrafficMeter} between C{links} and the onion C{switch}, add the
    relay's capacity probes and the C{"measure"} service that signs and
    publishes a report (and the probe readings) per epoch.
    @return: the publisher.
    """
    meter = TrafficMeter(switch, CELL_SIZE)
    links.setCellHandler(meter)
    probes = addCapacityProbes(node, settings, links, switch, dht)
    publisher = ReportPublisher(node.reactor, node.identity, dht.everyFamily, meter, settings["measure_epoch"],
                                probes=probes)
    addService(dht, "measure", publisher)
    node.status.addSource("measure", publisher)
    return publisher


def addMeasuredWeights(node, settings, dht, finder):
    """
    The client's C{"weights"} service: reads the reports of the relays
    C{finder} knows, each epoch, and their probe reports with C{--probe-weights}
    (the default).
    """
    probes = settings.get("probe_weights", True)
    seeds = SeedService(node.reactor, dht.everyFamily, settings["measure_epoch"]) if probes else None
    weights = MeasuredWeights(node.reactor, dht.everyFamily, lambda: {i: d.flags for i, d in finder.relays.items()},
                              settings["measure_epoch"], dataDir=node.dataDir, compute=inThread(node.reactor),
                              directory=(lambda: dict(finder.relays)) if probes else None, seeds=seeds)
    addService(dht, "weights", weights)
    node.status.addSource("weights", weights)
    return weights
