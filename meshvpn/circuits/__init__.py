"""Circuits for a client: which relays a path takes, building it, and keeping circuits ready.

Above the onion plane (which only knows how to run one circuit) and below
the streams that use them: path selection from DHT descriptors, the builder
that extends hop by hop, and the manager that keeps spares and replaces
circuits that die.
"""
