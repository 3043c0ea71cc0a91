"""
The SQLite event store with its schema and migrations, and the durable
outbox publisher that sends accepted events upstream until relays took them.
"""

__all__: list[str] = []
