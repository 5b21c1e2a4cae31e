"""A DNS server of the test's own on 127.0.0.1, answering A queries from a script.

It is an asyncio datagram endpoint on the test's event loop, so lookups the app makes through
`WEBHOOK_DNS_SERVER` cross a real UDP socket. Each A query takes the next address of the
script (the last one repeats); AAAA queries get an empty answer (no IPv6 address). Every query
is recorded as (name, type).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

import dns.message
import dns.rdatatype
import dns.rrset


@dataclass
class DnsServer(asyncio.DatagramProtocol):
    answers: list[str]
    port: int = 0
    queries: list[tuple[str, str]] = field(default_factory=list)
    _transport: asyncio.DatagramTransport | None = None

    @property
    def address(self) -> str:
        """The value of WEBHOOK_DNS_SERVER that points at this server."""
        return f"127.0.0.1:{self.port}"

    def a_queries(self) -> list[str]:
        return [name for name, kind in self.queries if kind == "A"]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport has DatagramTransport's methods without being a subclass.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        query = dns.message.from_wire(data)
        [question] = query.question
        kind = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((question.name.to_text(omit_final_dot=True), kind))
        response = dns.message.make_response(query)
        if kind == "A":
            address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            response.answer.append(dns.rrset.from_text(question.name, 0, "IN", "A", address))
        assert self._transport is not None
        self._transport.sendto(response.to_wire(), addr)


@asynccontextmanager
async def running_dns_server(*answers: str) -> AsyncIterator[DnsServer]:
    """A DNS server answering A queries with `answers`, one per query, then the last for ever."""
    server = DnsServer(list(answers))
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", 0)
    )
    server.port = int(transport.get_extra_info("sockname")[1])
    try:
        yield server
    finally:
        transport.close()
