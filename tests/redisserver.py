"""
A real Redis server for the cluster tests: Debian's C{redis-server} on a
free loopback port, in a temporary directory, with no persistence.
L{RedisServer.stop} and L{RedisServer.start} again restart it on the same
port, as an operator's restart would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest

MISSING = (
    "a Redis server is needed for the cluster tests: "
    "install Debian's redis-server package (apt-get install -y redis-server)"
)

START_TIMEOUT = 10.0


def freePort() -> int:
    """
    @return: a TCP port free on 127.0.0.1 a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def requireRedis() -> str:
    """
    @return: the path of C{redis-server}.
    @raise SkipTest: if it is not installed (outside CI; under C{CI=true}
        the tests fail instead, with L{MISSING}).
    """
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("CI") == "true":
            raise AssertionError(MISSING)
        raise SkipTest(MISSING)
    return path


class RedisServer:
    """
    One C{redis-server} process.

    @ivar port: its port on 127.0.0.1.
    """

    def __init__(self) -> None:
        self._executable = requireRedis()
        self.port = freePort()
        self.directory = tempfile.mkdtemp(prefix="relaypool-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """
        Start the server and wait (at most L{START_TIMEOUT} seconds) until
        it accepts connections.
        """
        log = open(os.path.join(self.directory, "redis.log"), "ab")
        self._process = subprocess.Popen(
            [
                self._executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.directory,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited: see {self.directory}/redis.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start within {START_TIMEOUT} s")

    def stop(self) -> None:
        """
        Stop the server (at once: SIGKILL, as a crash) and wait for it.
        """
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=START_TIMEOUT)
            self._process = None

    def command(self, *args: str) -> bytes:
        """
        Run one command over a plain socket, outside the reactor (for
        checks), and return the raw reply.
        """
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"".join(parts))
            return s.recv(65536)

    def cleanUp(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def startRedis(case: object) -> RedisServer:
    """
    Start a server for a test case, stopped and removed at its cleanup.
    """
    server = RedisServer()
    server.start()
    case.addCleanup(server.cleanUp)  # type: ignore[attr-defined]
    return server
