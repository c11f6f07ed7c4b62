"""Connectivity: STUN codec, client and server, NAT classification, hole punching, relay."""
