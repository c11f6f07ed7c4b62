"""The probe settings: C{auto} and explicit seconds parse, anything else is refused, and relays probe by default."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from meshvpn.measure.settings import (AUTO, AUTO_MAX, AUTO_MIN, DEFAULT_PROBE_SECONDS, parseProbeSeconds,
                                      probeSecondsFor, probeWeightSettings)


class ProbeSecondsTests(unittest.TestCase):
    def test_autoIsTheDefault(self):
        self.assertEqual(DEFAULT_PROBE_SECONDS, AUTO)
        self.assertEqual(parseProbeSeconds("auto"), AUTO)
        self.assertEqual(parseProbeSeconds(" AUTO "), AUTO)
        self.assertTrue(probeWeightSettings()[0].default)

    def test_autoScalesWithTheEpoch(self):
        # 20 s at hourly epochs (the value measured), 2 s in a test network's 20 s epoch
        self.assertEqual(probeSecondsFor(AUTO, 3600), 20.0)
        self.assertEqual(probeSecondsFor(AUTO, 20), 2.0)
        self.assertEqual(probeSecondsFor(AUTO, 720), 4.0)
        self.assertEqual(probeSecondsFor(AUTO, 28800), 20.0)

    def test_explicitSecondsAndOff(self):
        self.assertEqual(parseProbeSeconds("0"), 0.0)
        self.assertEqual(parseProbeSeconds(4), 4.0)
        self.assertEqual(probeSecondsFor(4.0, 3600), 4.0)
        self.assertEqual(probeSecondsFor(0.0, 3600), 0.0)
        for bad in ("0.5", "601", "-1", "nan", "", "automatic", True, None, [4]):
            self.assertRaises(ValueError, parseProbeSeconds, bad)

    @given(st.one_of(st.text(max_size=12), st.floats(allow_nan=True), st.integers(), st.booleans(), st.none()))
    def test_anyValueParsesOrIsRefused(self, raw):
        try:
            value = parseProbeSeconds(raw)
        except ValueError:
            return
        self.assertTrue(value == AUTO or value == 0 or 1 <= value <= 600, value)

    @given(st.integers(min_value=5, max_value=28800))
    def test_autoWithinItsBounds(self, epoch):
        self.assertTrue(AUTO_MIN <= probeSecondsFor(AUTO, epoch) <= AUTO_MAX)
