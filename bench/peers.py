"""
What several benches share: a free port on 127.0.0.1, the file
descriptor limit raised to the hard limit, and PyPI C{nostr-relay} (the
peer relay of the C{bench} extra) set up as its users run it, from its
command line and a config file.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import sys


def freePort() -> int:
    """
    @return: a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def raiseFileLimit() -> None:
    """
    Raise this process's soft limit of open file descriptors to the hard
    limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def nostrRelayCommand(
    folder: str, port: int, loglevel: str | None = None, subscriptionLimit: int | None = None
) -> list[str]:
    """
    Write C{nostr-relay}'s C{config.yaml} in C{folder} (SQLite storage in
    C{folder}, one worker listening on C{port}).

    @return: the command serving with it.
    @raise RuntimeError: if C{nostr-relay} is not installed beside this
        Python.
    """
    executable = shutil.which("nostr-relay", path=os.path.dirname(sys.executable))
    if executable is None:
        raise RuntimeError("nostr-relay is not installed: pip install '.[bench]'")
    lines = [
        "storage:",
        f"  sqlalchemy.url: sqlite+aiosqlite:///{folder}/nostr.sqlite3",
        "gunicorn:",
        f"  bind: 127.0.0.1:{port}",
        "  workers: 1",
    ]
    if loglevel is not None:
        lines.append(f"  loglevel: {loglevel}")
    if subscriptionLimit is not None:
        lines.append(f"subscription_limit: {subscriptionLimit}")
    config = os.path.join(folder, "config.yaml")
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    return [executable, "-c", config, "serve"]
