"""
nostr-tools under node, for the NIP-77 interoperability tests.

C{NOSTR_TOOLS_DIR} names a folder holding C{node_modules/nostr-tools}
(C{.ci/run} installs the npm package into a temporary folder and sets it).
Without it, or without C{node}, the tests that need them skip, except under
C{CI=true}, where they fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from twisted.trial.unittest import SkipTest

__all__ = ["PEER_SCRIPT", "nostrToolsDir", "requireNostrTools"]

PEER_SCRIPT = Path(__file__).with_name("negentropy_peer.mjs")

MISSING = (
    "needs node and nostr-tools: npm install --prefix DIR nostr-tools, "
    "then set NOSTR_TOOLS_DIR=DIR (.ci/run does this)"
)


def nostrToolsDir() -> str | None:
    """
    The folder holding C{node_modules/nostr-tools}, or L{None} if
    C{NOSTR_TOOLS_DIR} is unset or wrong, or C{node} is missing.
    """
    folder = os.environ.get("NOSTR_TOOLS_DIR")
    if not folder or shutil.which("node") is None:
        return None
    if not (Path(folder) / "node_modules" / "nostr-tools" / "package.json").exists():
        return None
    return folder


def requireNostrTools(fail: object) -> str:
    """
    The nostr-tools folder; skip the calling test without it, or fail it
    (through C{fail}, the test's C{fail} method) under C{CI=true}.
    """
    folder = nostrToolsDir()
    if folder is None:
        if os.environ.get("CI") == "true":
            fail(MISSING)  # type: ignore[operator]
        raise SkipTest(MISSING)
    return folder
