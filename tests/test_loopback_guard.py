"""The suite itself refuses to let a test connect off this machine."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.conftest import LoopbackGuard, OffMachineConnection

# TEST-NET-1 (RFC 5737): reserved for documentation, routed nowhere. The guard refuses it
# before a packet is sent.
DOCUMENTATION_ADDRESS = "192.0.2.10"


async def test_an_off_machine_connection_is_refused_and_remembered(
    loopback_guard: LoopbackGuard,
) -> None:
    with pytest.raises(OffMachineConnection):
        await asyncio.open_connection(DOCUMENTATION_ADDRESS, 80)
    assert loopback_guard.violations == [f"('{DOCUMENTATION_ADDRESS}', 80)"]
    loopback_guard.violations.clear()  # this test's attempt was the point, not a leak


def test_loopback_and_unix_sockets_are_allowed(loopback_guard: LoopbackGuard) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=1):
            pass
    left, right = socket.socketpair(socket.AF_UNIX)
    left.close()
    right.close()
    assert loopback_guard.violations == []
