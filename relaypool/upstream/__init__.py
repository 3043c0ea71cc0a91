"""
The upstream side: one Relay per upstream Nostr relay and the RelayPool over
them (verified dedup, merged EOSE, publish and COUNT quorums), its
subscriptions and result values, and the NIP-11 fetch.
"""

__all__: list[str] = []
