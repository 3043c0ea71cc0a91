"""
Tests for the C{twistd relaypool} dropin, C{twisted/plugins/relaypool_plugin.py}.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import TestCase

_REPO = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """
    Run a command with the repository first on C{PYTHONPATH}, from a
    temporary directory, bounded in time.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=60, cwd=os.getcwd(), check=False
    )


def _twistd() -> list[str]:
    """
    The command running C{twistd} with this Python.
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class PluginTests(TestCase):
    """
    The dropin is found by twistd and stays import-light.
    """

    def test_found(self) -> None:
        """
        L{getPlugins} finds a service maker named C{relaypool} whose module
        is L{relaypool.service}.
        """
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("relaypool", makers)
        self.assertEqual(makers["relaypool"].module, "relaypool.service")

    def test_importLight(self) -> None:
        """
        Importing the dropin imports neither the reactor nor relaypool.
        """
        result = _run(
            sys.executable,
            "-c",
            "import sys; import twisted.plugins.relaypool_plugin;"
            " print('twisted.internet.reactor' in sys.modules,"
            " any(m.startswith('relaypool') for m in sys.modules))",
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "False False"))

    def test_serviceModuleNoReactor(self) -> None:
        """
        Importing L{relaypool.service} (what twistd does before installing
        a reactor chosen with C{-r}) does not import the reactor.
        """
        result = _run(
            sys.executable,
            "-c",
            "import sys; import relaypool.service; print('twisted.internet.reactor' in sys.modules)",
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "False"))

    def test_noPackageInit(self) -> None:
        """
        The repository has no C{__init__.py} in C{twisted/} or
        C{twisted/plugins/}, which would shadow Twisted's own packages.
        """
        self.assertFalse((_REPO / "twisted" / "__init__.py").exists())
        self.assertFalse((_REPO / "twisted" / "plugins" / "__init__.py").exists())

    def test_help(self) -> None:
        """
        C{twistd relaypool --help} prints the relaypool options and their
        defaults.
        """
        result = _run(*_twistd(), "relaypool", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for text in ("--relay=", "--listen=", "--store=", "relaypool.db", "--no-verify"):
            self.assertIn(text, result.stdout)

    def test_badRelay(self) -> None:
        """
        C{twistd -n relaypool --relay} with a URL that is not ws:// or
        wss:// exits with a usage error naming the option.
        """
        result = _run(*_twistd(), "-n", "relaypool", "--relay", "http://relay.example")
        self.assertEqual(result.returncode, 1)
        self.assertIn('--relay: "http://relay.example" is not a ws:// or wss:// URL', result.stdout)
