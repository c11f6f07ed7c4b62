"""Parse a client role's options the way twistd would, for tests of one setting at a time."""

from meshvpn.roles import client

LOOPBACK_PORTS = ("--udp", "127.0.0.1:0", "--socks-listen", "127.0.0.1:0")


def parseClientOptions(testCase, *argv, config=None, extra=()):
    """
    Parse C{argv} (after a fresh data dir, loopback ports and C{extra}) as
    the client role's options; C{config}, if given, is written to a TOML
    file passed with --config.
    """
    opts = client.Options()
    args = ["--data-dir", testCase.mktemp(), *LOOPBACK_PORTS, *extra, *argv]
    if config is not None:
        path = testCase.mktemp()
        with open(path, "w") as f:
            f.write(config)
        args += ["--config", path]
    opts.parseOptions(args)
    return opts
