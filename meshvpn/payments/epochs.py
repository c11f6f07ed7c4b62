"""Token epochs: when an issuer key signs, and until when its tokens may be spent.

Why epochs: a spent-token store must not grow forever, and a key that
signed for ever would let a thief of old tokens spend them for ever.  So
time is cut into epochs of C{length} seconds (epoch C{E} is
C{[E*length, (E+1)*length)}); the issuer signs with one key per epoch and
a token of epoch C{E} is spendable until C{grace} more epochs have passed.
Once that is over, exits refuse its tokens and every party deletes that
epoch's spent list and key.  Long epochs make bigger crowds of
indistinguishable tokens (better privacy) at the cost of a bigger store.
"""

import attrs


@attrs.frozen
class EpochSchedule:
    length: int  # seconds
    grace: int = 1  # epochs after its own during which an epoch's tokens stay spendable

    def __attrs_post_init__(self):
        if not isinstance(self.length, int) or self.length < 60:
            raise ValueError("an epoch lasts at least 60 seconds")
        if not 0 <= self.grace <= 16:
            raise ValueError("grace is 0 to 16 epochs")

    def epochAt(self, t):
        return int(t // self.length)

    def start(self, epoch):
        return epoch * self.length

    def issuingUntil(self, epoch):
        """The end of C{epoch}: its key signs no purchase after this."""
        return (epoch + 1) * self.length

    def spendableUntil(self, epoch):
        """Tokens of C{epoch} are refused from this time on."""
        return (epoch + 1 + self.grace) * self.length

    def spendableAt(self, epoch, t):
        return self.start(epoch) <= t < self.spendableUntil(epoch)

    def liveEpochs(self, t):
        """The epochs whose tokens are spendable at C{t}, oldest first."""
        now = self.epochAt(t)
        return list(range(now - self.grace, now + 1))
