"""One module per fuzz target; each defines C{TARGET}, a L{meshvpn.fuzz.target.FuzzTarget}."""
