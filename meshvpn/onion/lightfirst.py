"""The order in which a held channel queue leaves: light circuits first.

A channel writes its queue at the end of every reactor turn, so cells
normally wait less than a turn and their order does not matter.  When the
link stops taking cells (its peer reads slowly: a starved CPU, a slow
network) the queue is held until the link resumes, and a bulk circuit
fills it: up to the high-water mark, 1,024 cells (512 KB).  Written in
arrival order, a cell of an interactive circuit that came in meanwhile
would then be the last of those 512 KB, which the next hop reads 64 KB a
turn.  So a held queue leaves circuit by circuit, the circuits with the
fewest cells waiting first: the cells a circuit has queued are its recent
activity on this link (Tor's EWMA circuit priority, counted where the
wait is), and every circuit's own cells keep their order.

It runs only for a queue that was held, never on the per-turn write: the
cost (one pass over the queue) is paid when the link was stalled anyway.
"""


def lightFirst(cells):
    """
    C{cells} (each starting with its 4-byte circuit id) grouped by circuit,
    the circuit with the fewest first (ties: the one that queued first),
    each circuit's cells in their order.

    @return: a new list (C{cells} itself when it holds one circuit).
    """
    groups = {}
    for cell in cells:
        key = cell[:4]
        group = groups.get(key)
        if group is None:
            groups[key] = [cell]
        else:
            group.append(cell)
    if len(groups) < 2:
        return cells
    out = []
    for group in sorted(groups.values(), key=len):  # stable: ties keep the order they queued in
        out.extend(group)
    return out
