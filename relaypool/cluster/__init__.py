"""
Several relaypool nodes as one, on a Redis server: leases on the shared
upstream subscriptions (L{relaypool.cluster.leases}), each filter set's
events passed between nodes on a Redis stream (L{relaypool.cluster.node},
L{relaypool.cluster.shared}), over the node's link to Redis
(L{relaypool.cluster.link}).
"""

__all__: list[str] = []
