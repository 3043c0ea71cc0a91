"""
The transport layer: name services (static, DNS), the UniformMultiplexer of
reconnecting Autobahn client connections, the factory-based request Pool,
per-connection health and the lean receiving side of Autobahn protocols.
Knows nothing of Nostr.
"""

__all__: list[str] = []
