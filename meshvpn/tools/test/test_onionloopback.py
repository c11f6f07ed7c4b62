"""A 3-hop circuit over real TLS links on loopback (all nodes in this process)."""

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from meshvpn.tools.onionloopback import LoopbackNet, buildTimes


class RealLinks(unittest.TestCase):
    timeout = 60

    async def _roundTrip(self):
        net = LoopbackNet(reactor)
        await net.start()
        try:
            circuit, took = await net.build()
            self.assertEqual(len(circuit.crypto.hops), 3)
            got = defer.Deferred()
            received = []

            def receive(packets):
                received.extend(packets)
                if len(received) == 50 and not got.called:
                    got.callback(None)

            circuit.setPacketReceiver(receive)
            packets = [i.to_bytes(2, "big") * 700 for i in range(50)]
            self.assertEqual(circuit.sendPackets(packets), 50)
            await got
            self.assertEqual(received, packets)
            # the guard carries exactly this circuit; closing it clears every relay
            closed = circuit.whenClosed()
            circuit.close()
            await closed
            await task.deferLater(reactor, 0.05, lambda: None)
            for manager in net.managers[:3]:
                self.assertEqual(manager._handler.circuitCount(), 0)
            # links the guard opened to the middle were made by EXTEND2 through the link manager
            self.assertGreaterEqual(net.managers[0].counters["opened_out"], 1)
        finally:
            await net.stop()

    def test_packetsBothWaysOverTLS(self):
        return defer.Deferred.fromCoroutine(self._roundTrip())

    def test_buildTimes(self):
        d = defer.Deferred.fromCoroutine(buildTimes(reactor, 3))

        def check(result):
            self.assertGreater(result["build_time_tls_loopback_median_s"], 0)

        return d.addCallback(check)
