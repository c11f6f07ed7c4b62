"""``meshvpn fuzz``: list the targets, run one or all under atheris, replay the corpus, rewrite the seeds."""

import json

from meshvpn.errors import MeshVPNError


def addFuzzCommand(sub):
    p = sub.add_parser(
        "fuzz", help="coverage-guided fuzzing of a parser (atheris)",
        description="Fuzz a parser that reads bytes from the network or a file, seeded with real messages. "
                    "Anything but the parser's declared error is a bug: the crashing input is kept.")
    p.add_argument("target", nargs="?", help="a target name (see --list), or 'all'")
    p.add_argument("--list", action="store_true", help="list the targets and their checked-in inputs")
    p.add_argument("--seconds", type=int, default=60, help="how long to fuzz each target (default 60)")
    p.add_argument("--parallel", type=int, default=1, help="targets fuzzed at once with 'all' (default 1)")
    p.add_argument("--corpus", metavar="DIR", help="keep the inputs found here (one subdirectory per target)")
    p.add_argument("--crashes", metavar="DIR", default="fuzz-crashes", help="where crashing inputs are copied")
    p.add_argument("--replay", action="store_true", help="only feed the checked-in inputs, in process")
    p.add_argument("--write-seeds", action="store_true", help="regenerate the seed corpus from real messages")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _names(args):
    from meshvpn.fuzz import registry

    if args.list or args.target in (None, "all"):
        return registry.names()
    if args.target not in registry.TARGETS:
        raise MeshVPNError(f"no fuzz target {args.target!r}; targets: {', '.join(registry.names())}")
    return [args.target]


def run(args):
    from meshvpn.fuzz import corpora, registry, replay

    names = _names(args)
    if args.list:
        rows = [{"target": n, "what": registry.load(n).what, "inputs": len(corpora.inputs(n))} for n in names]
        if args.json:
            print(json.dumps({"targets": rows}))
        else:
            for row in rows:
                print(f"{row['target']:20} {row['inputs']:4} inputs  {row['what']}")
        return 0
    if args.target is None:
        raise MeshVPNError("name a target (or 'all'); --list shows them")
    if args.write_seeds:
        out = {n: corpora.writeSeeds(registry.load(n)) for n in names}
        print(json.dumps({"seeds": out}) if args.json else "\n".join(f"{n}: {k} seeds" for n, k in out.items()))
        return 0
    if args.replay:
        out = [replay.replay(n) for n in names]
        print(json.dumps({"replayed": out}) if args.json else "\n".join(json.dumps(r) for r in out))
        return 0
    try:
        import atheris  # noqa: F401 (checked here so the error is one line)
    except ImportError:
        raise MeshVPNError("atheris is not installed (pip install 'meshvpn[fuzz]')") from None
    from meshvpn.fuzz import runner

    results = runner.runAll(names, args.seconds, parallel=max(1, args.parallel), keepArtifacts=args.crashes,
                            corpusRoot=args.corpus)
    crashed = [r["target"] for r in results if r["crash"]]
    if args.json:
        print(json.dumps({"results": results, "crashed": crashed}))
    else:
        for r in results:
            status = "CRASH" if r["crash"] else "ok"
            print(f"{r['target']:20} {status:5} {r['executions']:>9} execs  cov {r['coverage']:5}  "
                  f"+{r['new_units']} units  {r['peak_rss_mb']} MB")
            if r["crash"]:
                print(r["crash"]["report"])
    return 1 if crashed else 0
