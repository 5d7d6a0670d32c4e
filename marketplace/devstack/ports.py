"""Loopback ports for the servers the embedded default and the tests start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
