"""
The transport layer: name services (static, DNS), the UniformMultiplexer of
reconnecting Autobahn client connections, the factory-based request Pool and
per-connection health. Knows nothing of Nostr.
"""

__all__: list[str] = []
