"""Imported first by every script the tests run: any DNS lookup of a name that is not loopback, and any connection
to an address that is not loopback, is recorded and refused; at exit (after AgentOps' own exit handlers, which run
first) the process exits 97 naming each attempt, so the test fails."""

from __future__ import annotations

import atexit
import ipaddress
import os
import socket
import sys
import traceback

attempts: list[str] = []
_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what: str) -> None:
    attempts.append(f"{what}\n{''.join(traceback.format_stack(limit=10)[:-2])}")


def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
    if not _is_loopback(host):
        _refuse(f"DNS lookup of {host!r}")
        raise socket.gaierror(socket.EAI_NONAME, f"the test's network guard refused a lookup of {host!r}")
    return _getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]


def _check(sock: socket.socket, address: object) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):  # type: ignore[index]
        _refuse(f"connection to {address!r}")
        raise ConnectionRefusedError(f"the test's network guard refused a connection to {address!r}")


def connect(self: socket.socket, address: object) -> None:
    _check(self, address)
    return _connect(self, address)  # type: ignore[arg-type]


def connect_ex(self: socket.socket, address: object) -> int:
    _check(self, address)
    return _connect_ex(self, address)  # type: ignore[arg-type]


def _report() -> None:
    if attempts:
        sys.stderr.write("NETWORK ATTEMPTS:\n" + "\n".join(attempts) + "\n")
        sys.stderr.flush()
        os._exit(97)


socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
socket.socket.connect = connect  # type: ignore[method-assign]
socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
atexit.register(_report)  # registered before AgentOps' handlers, so it runs after them
