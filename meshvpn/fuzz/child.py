"""One fuzz run in this process: ``python -m meshvpn.fuzz.child TARGET [libFuzzer flags and corpus dirs]``.

atheris never returns from its loop (libFuzzer exits the process), so
every run is its own process; L{meshvpn.fuzz.runner} starts it.  The
target's module, and with it every parser it reaches, is imported inside
atheris's instrumentation so coverage guides the search.
"""

import sys


def main(argv):
    import atheris

    from meshvpn.fuzz import registry

    name, flags = argv[1], argv[2:]
    with atheris.instrument_imports(include=["meshvpn"]):
        target = registry.load(name)
    atheris.Setup([argv[0]] + flags, target.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
