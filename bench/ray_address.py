"""``--executor ray --address``: checked and reached before Ray is asked to connect.

``ray.init(address="127.0.0.1:1")`` retries for as long as Ray's own reconnect settings say (the suite
never exited), and ``ray://`` without the client extra fails deep inside Ray. Here: the address's form,
the client extra for ``ray://``, and a TCP connection to HOST:PORT within ``CONNECT_TIMEOUT_S``; every
failure is one line, before any work.
"""
from __future__ import annotations

import re
import socket

from lightcl.engine.errors import InputError, StateError

CONNECT_TIMEOUT_S = 10.0
_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]{1,253})):(?P<port>\d{1,5})$")


class ClusterUnreachable(StateError):
    """The Ray cluster named by --address cannot be reached."""


def parse(address: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of ``address``; None for ``auto`` / ``local`` (Ray decides)."""
    if not isinstance(address, str) or not address or len(address) > 300 or any(c.isspace() for c in address):
        raise InputError(f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {str(address)[:80]!r}")
    if address in ("auto", "local"):
        return None
    scheme, rest = ("ray", address[len("ray://"):]) if address.startswith("ray://") else ("gcs", address)
    m = _HOSTPORT.match(rest)
    if not m or not 0 < int(m["port"]) < 65536:
        raise InputError(f"--address must be auto, HOST:PORT or ray://HOST:PORT (port 1-65535), got {address[:80]!r}")
    return scheme, m["v6"] or m["host"], int(m["port"])


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse in one line an address Ray could not use or reach: bad form, ``ray://`` without ``ray[client]``
    (MissingDependencyError, exit 3), nothing listening at HOST:PORT within ``timeout`` seconds."""
    parsed = parse(address)
    if parsed is None:
        return
    scheme, host, port = parsed
    if scheme == "ray":
        from lightcl.engine.optional import require

        require("grpc", needed_for="--address ray://... (the Ray client)", install="pip install 'ray[client]'")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.timeout:
        raise ClusterUnreachable(f"--address {address}: no answer from {host}:{port} within {timeout:g} s; is the "
                                 "Ray cluster running there?") from None
    except OSError as e:
        raise ClusterUnreachable(f"--address {address}: cannot connect to {host}:{port} "
                                 f"({e.strerror or e}); is the Ray cluster running there?") from None
