"""
The twistd relaypool daemon: settings (a TOML file and the command line), the
service wiring and the try-it client.
"""

__all__: list[str] = []
