"""Run as a script: install a socket-level guard, then run the code given on argv[1].

Every attempt to resolve or connect to a host that is not loopback is recorded (and
refused); the script prints the attempts as JSON on its last line.
"""

import json
import socket
import sys

ATTEMPTS: list[str] = []
_LOOPBACK = ("127.", "::1", "localhost", "0.0.0.0")


def _allowed(host) -> bool:
    return isinstance(host, str) and host.startswith(_LOOPBACK)


_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def getaddrinfo(host, *args, **kw):
    if not _allowed(host if not isinstance(host, bytes) else host.decode()):
        ATTEMPTS.append(f"getaddrinfo {host}")
        raise OSError(f"network guard: {host} is not loopback")
    return _getaddrinfo(host, *args, **kw)


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _allowed(address[0]):
        ATTEMPTS.append(f"connect {address}")
        raise OSError(f"network guard: {address} is not loopback")
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _allowed(address[0]):
        ATTEMPTS.append(f"connect_ex {address}")
        return 111
    return _connect_ex(self, address)


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
socket.socket.connect_ex = connect_ex

try:
    exec(compile(sys.argv[1], "<guarded>", "exec"), {"__name__": "__guarded__"})
finally:
    print(json.dumps(ATTEMPTS))
