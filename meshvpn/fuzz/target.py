"""What a fuzz target is: a name, the parser's declared errors, one input's run, and real seeds."""

import attrs


@attrs.frozen
class FuzzTarget:
    """
    @ivar name: the command-line name (C{meshvpn fuzz NAME}).
    @ivar what: one line saying which parser and where its bytes come from.
    @ivar errors: the exception classes the parser declares for malformed
        input; any other exception escaping C{run} is a bug.
    @ivar run: C{callable(bytes)}, feeds one input to the parser(s).
    @ivar seeds: C{callable() -> list[bytes]}, real messages serialised by
        the project's own encoders (the seed corpus is made from them).
    """

    name: str
    what: str
    errors: tuple
    run: object
    seeds: object

    def check(self, data):
        """
        Run one input.

        @return: C{True} if the parser accepted it, C{False} if it raised
            one of its declared errors.
        @raise Exception: anything else (a bug).
        """
        try:
            self.run(data)
        except self.errors:
            return False
        return True
