"""The size of a cell on a link, the one number the link and onion planes must agree on.

Kept in a module of its own so the onion plane can import it without
importing the link's framing or protocol.
"""

CELL_SIZE = 514
