"""
The downstream side: the connection registry (rooms, slow and idle
clients), the NIP-01 relay facade and the HTTP pages on the same port.
"""

__all__: list[str] = []
