"""How every `meshvpn bench` prints its result: one JSON object, or one `key value` line each."""

import json


def report(result, asJSON, out=print):
    if asJSON:
        out(json.dumps(result))
    else:
        width = max((len(k) for k in result), default=0) + 2
        for k, v in result.items():
            out(f"{k:{width}}{v}")
