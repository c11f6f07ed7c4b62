"""Kademlia DHT: MeshVPN's discovery plane (peer discovery and the signed relay directory).

Modules, bottom up: L{wire} (the byte format), L{records} (signed values),
L{routing} (k-buckets), L{rpc} (the protocol engine on the node's UDP socket),
L{lookup} (iterative alpha-parallel lookups), L{service} (attaching a DHT to a
node), L{directory} (relay descriptors in the DHT), L{sim} and L{bench}
(the in-memory network that runs this same code at thousands of nodes).
"""

K = 20
ALPHA = 3
