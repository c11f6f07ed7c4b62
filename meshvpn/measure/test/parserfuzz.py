"""The two attacks every signed-record parser of the measurements must survive, written once for all of them.

Any bytes a peer stores in the DHT either parse or raise the parser's own
error (never another exception), and a valid record with one byte changed
is refused unless the change left it the same: nothing a forger alters
survives the signature and the bounds.
"""

from hypothesis import given, settings
from hypothesis import strategies as st


def malformedRecordTests(parse, error, maxSize, validRaw):
    """
    Any bytes, and a valid record with one byte changed, fed to C{parse}.

    The tests are made afresh for each parser: hypothesis refuses one test
    function run by instances of several classes (its examples would not
    replay), so a plain mixin of them would fail once two parsers' tests run
    in one process.

    @param parse: bytes to a record that keeps them as its C{raw}.
    @param error: what C{parse} raises on what it refuses.
    @param maxSize: the longest random input to try.
    @param validRaw: hypothesis' C{data} to a signed record's bytes.
    @return: a mixin for a C{TestCase}.
    """

    class MalformedRecordTests:
        @settings(max_examples=300, deadline=None)
        @given(st.binary(max_size=maxSize))
        def test_anyBytesParseOrRefuse(self, raw):
            try:
                parse(raw)
            except error:
                pass

        @settings(max_examples=300, deadline=None)
        @given(st.data())
        def test_aChangedRecordIsRefusedOrTheSame(self, data):
            raw = validRaw(data)
            pos = data.draw(st.integers(0, len(raw) - 1))
            new = raw[:pos] + bytes([data.draw(st.integers(0, 255))]) + raw[pos + 1 :]
            try:
                p = parse(new)
            except error:
                return
            self.assertEqual(new, raw)
            self.assertEqual(p.raw, raw)

    return MalformedRecordTests
