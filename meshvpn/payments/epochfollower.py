"""A service told of each measured epoch: what the payer and a relay's payout check share.

Both act once an epoch's weights are computed (L{meshvpn.measure.service.MeasuredWeights}
calls its observers with the epoch); they follow only while running, so a
stopped service is never called.
"""

from twisted.application import service


class EpochFollower(service.Service):
    """Subclasses set C{self.weights} and define C{_measured(epoch)}."""

    def startService(self):
        super().startService()
        self.weights.observers.append(self._measured)

    def stopService(self):
        super().stopService()
        if self._measured in self.weights.observers:
            self.weights.observers.remove(self._measured)

    def _measured(self, epoch):
        raise NotImplementedError
