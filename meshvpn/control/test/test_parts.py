"""The control plane's parts alone, deterministic: steering filter, settings, events, bandwidth, VPN switch, metrics text."""

import os
import stat

from twisted.application import service
from twisted.internet import task
from twisted.logger import LogLevel
from twisted.trial import unittest

from meshvpn.circuits.pathselect import RelayInfo
from meshvpn.config import ConfigError, Setting, parsePositiveInt
from meshvpn.control.bandwidth import BandwidthSampler
from meshvpn.control.events import EventBus, LogTail
from meshvpn.control.model import NodeModel, Parts
from meshvpn.control.options import controlSettings
from meshvpn.control.runtime import RuntimeSettings, Tunable
from meshvpn.control.steering import RelaySteering
from meshvpn.errors import ControlError


def relay(n, roles):
    return RelayInfo(nodeId=bytes([n]) * 32, host=f"10.{n}.0.1", roles=frozenset(roles))


class SteeringTests(unittest.TestCase):
    def test_excludeAndPin(self):
        relays = [relay(1, {"guard", "middle"}), relay(2, {"guard", "middle"}), relay(3, {"exit", "middle"}),
                  relay(4, {"exit", "middle"})]
        path = os.path.join(self.mktemp())
        steering = RelaySteering(path)
        steering.exclude(relays[0].nodeId.hex())
        steering.pin(relays[3].nodeId.hex(), "exit")
        out = steering(relays)
        self.assertEqual([r.nodeId[0] for r in out], [2, 3, 4])
        self.assertEqual(out[1].roles, frozenset({"middle"}))  # the other exit may still be a middle
        self.assertEqual(out[2].roles, frozenset({"exit", "middle"}))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        again = RelaySteering(path)
        self.assertEqual(again.status(), steering.status())
        again.clear(relays[3].nodeId.hex())
        self.assertEqual(again.pinned, {})

    def test_damagedFileIgnored(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("{not json")
        self.assertEqual(RelaySteering(path).status(), {"pinned": {}, "excluded": []})

    def test_badPosition(self):
        self.assertRaises(ControlError, RelaySteering().pin, "ab" * 32, "anywhere")


class RuntimeSettingsTests(unittest.TestCase):
    def setUp(self):
        self.bus = EventBus(task.Clock())
        self.value = {"spare": 1}
        schema = [Setting("circuits-spare", parsePositiveInt, 1, "spares"),
                  Setting("udp", str, "0.0.0.0:0", "socket")]
        self.settings = {"circuits_spare": 1}
        self.runtime = RuntimeSettings(schema, [Tunable("circuits-spare", lambda: self.value["spare"],
                                                        lambda v: self.value.update(spare=v))], self.settings, self.bus)

    def test_applyAndPublish(self):
        self.assertEqual(self.runtime.set("circuits-spare", "4"), {"key": "circuits-spare", "value": 4})
        self.assertEqual((self.value["spare"], self.settings["circuits_spare"]), (4, 4))
        self.assertEqual(self.bus.held[-1]["type"], "settings.changed")

    def test_refusals(self):
        e = self.assertRaises(ConfigError, self.runtime.set, "circuits-spare", -3)
        self.assertEqual(str(e), "key 'circuits-spare' in control request: expected a whole number 0 or more, got -3")
        self.assertRaises(ConfigError, self.runtime.set, "udp", "1.2.3.4:5")
        self.assertRaises(ConfigError, self.runtime.set, "nope", 1)
        self.assertEqual(self.value["spare"], 1)
        self.assertEqual(len(self.bus.held), 0)


class OptionsTests(unittest.TestCase):
    def test_controlListenLoopbackOnly(self):
        from meshvpn.config import resolveSettings

        schema = controlSettings()
        self.assertEqual(resolveSettings(schema, {"control-listen": "127.0.0.2:7151"}, {})["control_listen"],
                         ("127.0.0.2", 7151))
        self.assertEqual(resolveSettings(schema, {"control-listen": "[::1]:7151"}, {})["control_listen"], ("::1", 7151))
        e = self.assertRaises(ConfigError, resolveSettings, schema, {"control-listen": "0.0.0.0:7151"}, {})
        self.assertIn("loopback", str(e))
        self.assertIsNone(resolveSettings(schema, {}, {})["metrics_listen"])


class EventBusTests(unittest.TestCase):
    def test_replayAndBound(self):
        bus = EventBus(task.Clock(), history=3)
        for i in range(5):
            bus.publish("x", {"i": i})
        got = []
        unsubscribe = bus.subscribe(got.append, since=2)
        self.assertEqual([e["id"] for e in got], [3, 4, 5])
        bus.publish("y", {})
        unsubscribe()
        bus.publish("z", {})
        self.assertEqual([e["type"] for e in got], ["x", "x", "x", "y"])

    def test_logTail(self):
        bus = EventBus(task.Clock())
        tail = LogTail(bus, lines=2)
        for level, text in ((LogLevel.info, "a"), (LogLevel.warn, "b"), (LogLevel.debug, "c")):
            tail({"log_level": level, "log_format": text, "log_namespace": "t", "log_time": 1.0})
        self.assertEqual([line["text"] for line in tail.tail("debug")], ["b", "c"])
        self.assertEqual([line["text"] for line in tail.tail("warn")], ["b"])
        self.assertEqual(bus.held[-1]["type"], "log")
        self.assertRaises(ValueError, tail.tail, "loud")


class FakeLink:
    def __init__(self):
        self.cellsIn = self.cellsOut = 0


class FakeLinks:
    def __init__(self):
        self.live = []

    def links(self):
        return list(self.live)


class BandwidthTests(unittest.TestCase):
    def test_closedLinkCountedOnce(self):
        clock, links = task.Clock(), FakeLinks()
        sampler = BandwidthSampler(clock, links)
        a = FakeLink()
        links.live.append(a)
        a.cellsIn, a.cellsOut = 10, 2
        clock.advance(1)
        self.assertEqual(sampler.sample(), {"t": 1.0, "up": 2 * 514, "down": 10 * 514})
        a.cellsIn = 15
        links.live.remove(a)  # closed between ticks: its last cells still count
        clock.advance(1)
        self.assertEqual(sampler.sample()["down"], 5 * 514)
        self.assertEqual(sampler.totals()["cells_in"], 15)
        clock.advance(1)
        self.assertEqual(sampler.sample()["down"], 0)


class FakeTun(service.Service):
    def status(self):
        return {"state": "up", "detail": "circuit x", "routes": {"host_routes": 1}, "to_circuit": 3, "from_circuit": 4}


class FakeNode:
    role = "client"
    settings = {}

    def __init__(self):
        self.reactor = task.Clock()

    def addresses(self):
        return {"udp": "127.0.0.1:1"}


class VpnSwitchTests(unittest.TestCase):
    def test_onAndOff(self):
        tun = FakeTun()
        model = NodeModel(FakeNode(), EventBus(task.Clock()), Parts(tun=tun))
        self.assertEqual(model.vpn()["state"], "stopped")
        vpn = self.successResultOf(model.setVpn(True))
        self.assertEqual((vpn["state"], vpn["kill_switch"], vpn["running"]), ("up", "on", True))
        vpn = self.successResultOf(model.setVpn(False))
        self.assertEqual((vpn["state"], vpn["kill_switch"]), ("stopped", "off"))
        self.assertEqual([e["type"] for e in model.bus.held], ["vpn", "vpn"])

    def test_noTun(self):
        model = NodeModel(FakeNode(), EventBus(task.Clock()), Parts())
        e = self.assertRaises(ControlError, model.setVpn, True)
        self.assertEqual(e.code, 409)

    def test_startFails(self):
        class Broken(FakeTun):
            def startService(self):
                raise OSError("no /dev/net/tun")

        model = NodeModel(FakeNode(), EventBus(task.Clock()), Parts(tun=Broken()))
        failure = self.failureResultOf(model.setVpn(True), ControlError)
        self.assertEqual(failure.getErrorMessage(), "could not turn the VPN on: no /dev/net/tun")


class BuiltCircuit:
    """What the tracker reads of a circuit: its path, its close."""

    streamHandler = None

    def __init__(self, path):
        from twisted.internet import defer

        self.path, self._closed = path, defer.Deferred()

    def whenClosed(self):
        from twisted.internet import defer

        d = defer.Deferred()
        self._closed.addBoth(lambda r: (d.callback(r), r)[1])
        return d

    def close(self, reason):
        if not self._closed.called:
            self._closed.callback(reason)


class CircuitEventTests(unittest.TestCase):
    """The manager tells the tracker of a build in the same turn: no tick, no read in between."""

    def setUp(self):
        from twisted.internet import defer

        from meshvpn.circuits.manager import CircuitManager
        from meshvpn.control.circuitview import CircuitTracker

        self.clock = task.Clock()
        self.bus = EventBus(self.clock)
        relays = [relay(n, {"guard", "middle", "exit"}) for n in range(1, 6)]
        self.pending = []

        def build(path):
            d = defer.Deferred()
            self.pending.append((d, path))
            return d

        import random

        self.manager = CircuitManager(self.clock, lambda: defer.succeed(relays), build, spares=1, rng=random.Random(1))
        self.tracker = CircuitTracker(self.clock, self.manager, self.bus)
        self.manager.startService()
        self.addCleanup(self.manager.stopService)

    def finishBuild(self):
        d, path = self.pending.pop(0)
        circuit = BuiltCircuit(path)
        d.callback(circuit)
        return circuit

    def types(self):
        return [e["type"] for e in self.bus.held]

    def test_builtInSameTurn(self):
        self.assertEqual(len(self.pending), 1)  # the spare is being built
        self.assertEqual(self.types(), [])
        circuit = self.finishBuild()  # no clock.advance: the same turn as the build's answer
        self.assertEqual(self.types(), ["circuit.built"])
        built = self.bus.held[-1]["data"]
        self.assertEqual((built["id"], built["state"], built["age_s"]), (1, "spare", 0.0))
        self.assertEqual([h["id"] for h in built["hops"]], [r.nodeId.hex() for r in circuit.path])
        circuit.close("finished")
        self.assertEqual(self.types(), ["circuit.built", "circuit.closed"])
        self.assertEqual(self.bus.held[-1]["data"]["reason"], "finished")

    def test_builtOnDemandAndReplacement(self):
        self.finishBuild()
        self.manager.spares = 0
        d = self.manager.getCircuit(isolation="a")  # takes the spare: not a new build, no event
        circuit = self.successResultOf(d)
        self.assertEqual(self.types(), ["circuit.built"])
        circuit.close("destroyed")  # in use: the manager rebuilds it at once
        self.assertEqual(self.types(), ["circuit.built", "circuit.closed"])
        replacement = self.finishBuild()
        self.assertEqual(self.types(), ["circuit.built", "circuit.closed", "circuit.built"])
        self.assertEqual(self.bus.held[-1]["data"]["id"], 2)
        self.assertEqual(self.bus.held[-1]["data"]["state"], "in-use")
        self.assertIs(self.tracker.find(2), replacement)
        self.manager.getCircuit(isolation="b")  # nothing spare: built for this request
        self.finishBuild()
        self.assertEqual(self.types()[-1], "circuit.built")
        self.assertEqual(len([t for t in self.types() if t == "circuit.closed"]), 1)  # each close told once


class MetricsTextTests(unittest.TestCase):
    def test_namesAndLabels(self):
        from prometheus_client.parser import text_string_to_metric_families

        from meshvpn.control.metrics import NodeMetrics

        model = NodeModel(FakeNode(), EventBus(task.Clock()), Parts(tun=FakeTun()))
        text = NodeMetrics(model.clock, model).text().decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        self.assertLessEqual({"meshvpn_link_cells", "meshvpn_link_bytes", "meshvpn_links", "meshvpn_nat_type",
                              "meshvpn_vpn_state", "meshvpn_dht_lookup_duration_seconds"}, names)
        self.assertIn("meshvpn_link_cells_total{direction=\"in\"} 0.0", text)
        self.assertTrue(all(n.startswith("meshvpn_") for n in names))

    def test_relayCounters(self):
        """A relay's switch counters: cells relayed each way, CREATE2 by result (the onion plane counts them)."""
        from prometheus_client.parser import text_string_to_metric_families

        from meshvpn.control.metrics import NodeMetrics

        class Switch:
            readLimiter = None

            def status(self):
                return {"circuit_ends": 2, "circuits_created": 5, "create_refused": 1, "cells_relayed_forward": 70,
                        "cells_relayed_backward": 900}

        model = NodeModel(FakeNode(), EventBus(task.Clock()), Parts(onion=Switch()))
        samples = {(s.name, tuple(s.labels.values())): s.value
                   for f in text_string_to_metric_families(NodeMetrics(model.clock, model).text().decode())
                   for s in f.samples}
        self.assertEqual(samples[("meshvpn_relay_cells_total", ("forward",))], 70)
        self.assertEqual(samples[("meshvpn_relay_cells_total", ("backward",))], 900)
        self.assertEqual(samples[("meshvpn_relay_creates_total", ("refused",))], 1)


class InterfaceTests(unittest.TestCase):
    def test_providers(self):
        from zope.interface.verify import verifyObject

        from meshvpn.circuits.manager import CircuitManager
        from meshvpn.control.circuitview import CircuitTracker
        from meshvpn.interfaces import ICircuitManager, ICircuitObserver, ICircuitSteering, IControlEvents, IControlModel

        bus = EventBus(task.Clock())
        self.assertTrue(verifyObject(IControlEvents, bus))
        self.assertTrue(verifyObject(IControlModel, NodeModel(FakeNode(), bus, Parts())))
        manager = CircuitManager(task.Clock(), lambda: None, lambda path: None)
        self.assertTrue(verifyObject(ICircuitSteering, manager))
        self.assertTrue(verifyObject(ICircuitManager, manager))
        self.assertTrue(verifyObject(ICircuitObserver, CircuitTracker(task.Clock(), manager, bus)))


class ConnectivityTests(unittest.TestCase):
    def test_oneProbeAtATimeAndEvent(self):
        from twisted.internet import defer

        from meshvpn.control.connectivity import ConnectivityCheck

        clock = task.Clock()
        bus = EventBus(clock)

        class Probe:
            def __init__(self):
                self.calls, self.d = [], defer.Deferred()

            def probe(self, servers):
                self.calls.append(servers)
                return self.d

        probe = Probe()
        check = ConnectivityCheck(clock, probe, lambda: ["127.0.0.1:3478", "bad", ("127.0.0.2", 1)], bus=bus, every=60)
        check.startService()
        self.addCleanup(check.stopService)
        self.assertEqual(probe.calls, [[("127.0.0.1", 3478), ("127.0.0.2", 1)]])
        second = check.check()
        self.assertEqual(len(probe.calls), 1)
        probe.d.callback({"type": "no-nat", "mapped_address": "1.2.3.4:5", "servers": [{"answered": True}]})
        self.assertEqual(self.successResultOf(second)["mapped_address"], "1.2.3.4:5")
        self.assertEqual((bus.held[-1]["type"], check.status()["servers_answered"]), ("nat", 1))
        probe.d = defer.succeed({"type": "no-nat", "servers": []})
        clock.advance(60)  # checked again; the same class publishes nothing new
        self.assertEqual(len(probe.calls), 2)
        self.assertEqual(len(bus.held), 1)
