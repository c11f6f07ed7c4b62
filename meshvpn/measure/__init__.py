"""Peer-measured bandwidth: signed per-epoch traffic reports, robust weights from them, the epoch loop."""
