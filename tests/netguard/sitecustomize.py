"""Network guard of the test suite, loaded by every Python process the tests start (this folder
is first on their PYTHONPATH) and by pytest itself (tests/conftest.py calls install()).

A connection to anything but loopback (127.0.0.0/8, ::1, 'localhost') or a Unix socket is
refused with an OSError, and so is the name lookup of any host but localhost (a DNS query leaves
the machine too, and comes first when a test reaches for a real download host); each attempt is
recorded, one line per attempt, in the file $NETGUARD_LOG; the test
run fails on any recorded line, even where the code under test swallowed the error."""
from __future__ import annotations

import ipaddress
import os
import socket
import sys

_ENV = "NETGUARD_LOG"


def _is_loopback(family: int, address) -> bool:
    if family == getattr(socket, "AF_UNIX", None):
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False  # a host name other than localhost: it would be resolved and left for
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _record(address, what: str = "connect to") -> None:
    line = f"pid {os.getpid()} ({' '.join(sys.argv)[:160]}): {what} {address!r} refused"
    path = os.environ.get(_ENV)
    if path:
        try:
            with open(path, "a") as f:
                f.write(line.replace("\n", " ") + "\n")
        except OSError:
            pass
    print(f"netguard: {line}", file=sys.stderr)


def install() -> None:
    if getattr(socket.socket, "_netguard", False):
        return
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode(errors="replace") if isinstance(host, bytes) else host
        if name not in (None, "", "localhost") and not _is_loopback(socket.AF_INET, (name,)):
            _record(name, "name lookup of")
            raise socket.gaierror(socket.EAI_NONAME, f"netguard: tests may resolve localhost only, not {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if not _is_loopback(self.family, address):
            _record(address)
            raise ConnectionRefusedError(f"netguard: tests may connect to loopback only, not {address!r}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not _is_loopback(self.family, address):
            _record(address)
            return 111  # ECONNREFUSED
        return real_connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.getaddrinfo = getaddrinfo
    socket.socket._netguard = True


if os.environ.get(_ENV):
    install()

# Chain to the next sitecustomize on the path, if the interpreter has one.
_here = os.path.dirname(os.path.abspath(__file__))
_rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
for _p in _rest:
    _f = os.path.join(_p or ".", "sitecustomize.py")
    if os.path.isfile(_f):
        exec(compile(open(_f).read(), _f, "exec"), {"__name__": "_chained_sitecustomize", "__file__": _f})
        break
