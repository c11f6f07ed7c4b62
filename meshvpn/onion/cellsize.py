"""The fixed size of every cell on a link: shared by the link and onion planes (see doc/protocol.md)."""

CELL_SIZE = 514
