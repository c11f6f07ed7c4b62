"""Split pt-spec's escaped C{k=v} lists: one reader for the two places the spec uses them.

Per-connection arguments packed into SOCKS5 credentials are separated by
C{;}, an SMETHOD's C{ARGS:} option by C{,}; in both a backslash escapes the
next character and the first unescaped C{=} ends the key.  What a list must
hold beyond that (keys present, non-empty) is each caller's rule.
"""


def splitEscapedPairs(text, separator):
    """
    @return: C{[(key, value), ...]}, C{key} C{None} where an item had no
        unescaped C{=}.
    @raise ValueError: a dangling backslash.
    """
    pairs, key, cur, escaped = [], None, [], False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "=" and key is None:
            key, cur = "".join(cur), []
        elif ch == separator:
            pairs.append((key, "".join(cur)))
            key, cur = None, []
        else:
            cur.append(ch)
    if escaped:
        raise ValueError("a dangling backslash")
    pairs.append((key, "".join(cur)))
    return pairs
