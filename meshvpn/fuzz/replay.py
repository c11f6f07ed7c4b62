"""Feed every checked-in input (seeds and kept crashes) to its target in this process, without atheris.

This is what keeps a fixed crash fixed: the regression tests call
L{replay}, and so does ``meshvpn fuzz --replay``.
"""

from meshvpn.fuzz import corpora, registry


def replay(name):
    """
    @return: C{{"target", "inputs", "accepted", "rejected"}}.
    @raise Exception: the first input that makes the target raise anything
        but its declared errors, with the input's path added to the message.
    """
    target = registry.load(name)
    accepted = rejected = 0
    items = corpora.inputs(name)
    for path, data in items:
        try:
            ok = target.check(data)
        except Exception as e:
            raise AssertionError(f"{name}: {path}: {type(e).__name__}: {e}") from e
        accepted += ok
        rejected += not ok
    return {"target": name, "inputs": len(items), "accepted": accepted, "rejected": rejected}
