"""Onion routing: cells, ntor, relay crypto, circuits, streams, path selection."""
