"""
JSON logs for twistd's C{--logger}: one JSON object per line, as
L{twisted.logger.jsonFileLogObserver} writes them (each line starts with
the record separator C{\\x1e}, as RFC 7464 JSON text sequences do).

    twistd -n --logger relaypool.daemon.jsonlog.observer relaypool ...
    twistd --logger relaypool.daemon.jsonlog.fileObserver relaypool ...

twistd calls the named function with no arguments and logs every event to
the observer it returns (and ignores C{--logfile}).
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver
from twisted.python.logfile import LogFile

__all__ = ["LOG_FILE", "fileObserver", "observer"]

LOG_FILE = "relaypool.log.json"
"""
The file L{fileObserver} writes, in twistd's working directory (its
C{--rundir}).
"""


def observer() -> FileLogObserver:
    """
    @return: an observer writing JSON lines to standard output (for C{twistd
        -n}, systemd and containers, which collect standard output).
    """
    return jsonFileLogObserver(sys.stdout)


def fileObserver() -> FileLogObserver:
    """
    @return: an observer writing JSON lines to L{LOG_FILE}, rotated every
        megabyte as twistd rotates its own log file (for a daemonized
        twistd, whose standard output goes nowhere).
    """
    return jsonFileLogObserver(LogFile.fromFullPath(LOG_FILE))  # type: ignore[no-untyped-call]
