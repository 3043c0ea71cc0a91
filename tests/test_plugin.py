"""
Tests for the C{twistd relaypool} dropin, C{twisted/plugins/relaypool_plugin.py}.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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
        args, env=env, capture_output=True, text=True, timeout=30, cwd=os.getcwd(), check=False
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
        is L{relaypool.daemon.service}.
        """
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("relaypool", makers)
        self.assertEqual(makers["relaypool"].module, "relaypool.daemon.service")

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
        Importing L{relaypool.daemon.service} (what twistd does before installing
        a reactor chosen with C{-r}) does not import the reactor.
        """
        result = _run(
            sys.executable,
            "-c",
            "import sys; import relaypool.daemon.service; print('twisted.internet.reactor' in sys.modules)",
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
        self.assertIn('--relay: "http://relay.example" is not a ws:// or wss:// URL', result.stderr)

    def test_invalidSetting(self) -> None:
        """
        C{twistd -n relaypool} with an invalid setting prints one line naming
        it and a hint to C{--help} (not the whole help), and exits 1.
        """
        result = _run(*_twistd(), "-n", "relaypool", "--quorum", "two")
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (
                1,
                "",
                'twistd relaypool: quorum: must be a positive integer, got "two"\n'
                "Try 'twistd relaypool --help'.\n",
            ),
        )


def _takenPort(case: TestCase) -> int:
    """
    @return: a port on 127.0.0.1 a socket listens on until C{case} ends.
    """
    taken = socket.socket()
    case.addCleanup(taken.close)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port: int = taken.getsockname()[1]
    return port


class StartupFailureTests(TestCase):
    """
    C{twistd relaypool} exits with status 1 and one line saying why when it
    cannot listen or cannot open its store.
    """

    def assertOneLine(self, result: subprocess.CompletedProcess[str], line: str) -> None:
        output = (result.stdout + result.stderr).splitlines()
        self.assertEqual(
            (result.returncode, [text for text in output if line in text]),
            (1, [output[-1]]),
            result.stdout + result.stderr,
        )
        self.assertTrue(output[-1].endswith(line), output[-1])

    def test_portTaken(self) -> None:
        """
        With the port taken, C{twistd -n relaypool} exits 1 with one line
        naming the endpoint and the reason.
        """
        listen = f"tcp:{_takenPort(self)}:interface=127.0.0.1"
        result = _run(
            *_twistd(), "-n", "--pidfile=", "relaypool", "--store", ":memory:", "--listen", listen
        )
        self.assertOneLine(result, f"relaypool: cannot listen on {listen}: Address already in use")

    def test_portTakenDaemonized(self) -> None:
        """
        Daemonized, with the port taken, C{twistd relaypool} exits 1 and
        says why (as twistd reports a failed start, cut at 100 bytes); the
        log file has the whole line.
        """
        listen = f"tcp:{_takenPort(self)}:interface=127.0.0.1"
        pidfile, logfile = os.path.abspath(self.mktemp()), os.path.abspath(self.mktemp())
        self.addCleanup(_killDaemon, pidfile)
        result = _run(
            *_twistd(),
            f"--pidfile={pidfile}",
            f"--logfile={logfile}",
            "relaypool",
            "--store",
            ":memory:",
            "--listen",
            listen,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"StartupError: cannot listen on {listen}", result.stderr)
        # The parent exits as soon as the daemon reports the failure; the
        # daemon may still be writing its log and removing its pidfile.
        logged = f"relaypool: cannot listen on {listen}: Address already in use"
        _waitFor(
            lambda: os.path.exists(logfile)
            and logged in Path(logfile).read_text()
            and not os.path.exists(pidfile)
        )

    def test_storeNotSQLite(self) -> None:
        """
        With a store file that is not SQLite, C{twistd -n relaypool} exits
        1 with one line naming the file and the reason.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("these are not the pages of a SQLite database\n" * 10)
        result = _run(
            *_twistd(),
            "-n",
            "--pidfile=",
            "relaypool",
            "--store",
            path,
            "--listen",
            "tcp:0:interface=127.0.0.1",
        )
        self.assertOneLine(
            result, f"relaypool: cannot open the store {path}: file is not a database"
        )


def _waitFor(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """
    Poll C{condition} every 20 ms until it holds; fail after C{timeout}
    seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s")
        time.sleep(0.02)


def _killDaemon(pidfile: str) -> None:
    """
    End the daemon whose pid is in C{pidfile}, if it is there (a daemon
    that started although it should not have).
    """
    try:
        with open(pidfile) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
