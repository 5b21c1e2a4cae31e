"""After a fault: did the live-update streams keep their contract?

`check_streams` holds every stream the load followed to it, against the timelines stored in the
database (read directly, not through the app):
- no stream answered a 5xx other than 503, or showed a traceback; none went unanswered (unless
  the client closed it first, within the deadline), and each answered (its head, or its
  refusal) within the request deadline;
- a refusal is a 429 or 503 problem+json with a `code`; a 204 comes only for a finished
  shipment whose every event the follower had heard;
- a stream that started ended with a `retry:` hint, its terminal event or its token's end
  (or was still open when the client closed it), never cut off without a word;
- the events a shipment's follower heard, across all its reconnects, are the stored timeline's
  first events: sequences 1..k, each once, in order, with the stored statuses, `id` = sequence;
- every stream still open when the load stopped had heard every stored event by then;
- streams were really open while the fault was in effect.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults.streams import CLEAN_ENDINGS, TERMINAL, Connection, FollowedShipment

REFUSALS = frozenset({429, 503})


async def stored_timelines(engine: AsyncEngine) -> dict[str, list[tuple[int, str]]]:
    timelines: dict[str, list[tuple[int, str]]] = defaultdict(list)
    query = "SELECT shipment_id, sequence, status FROM shipment_events ORDER BY sequence"
    async with engine.connect() as connection:
        for row in await connection.execute(text(query)):
            timelines[str(row.shipment_id)].append((row.sequence, row.status))
    return timelines


async def check_streams(
    engine: AsyncEngine,
    followed: list[FollowedShipment],
    deadline_seconds: float,
    *,
    behind: list[str],
    open_at: list[float],
) -> None:
    """Assert the above. `behind`: what the load found still lagging when it stopped;
    `open_at`: moments of the fault (injected, lifted) when streams must have been open."""
    timelines = await stored_timelines(engine)
    problems = [f"never caught up: {line}" for line in behind]
    for shipment in followed:
        for connection in shipment.connections:
            problems += [f"{shipment}: {p}" for p in _connection(connection, deadline_seconds)]
        problems += [f"{shipment}: {p}" for p in _heard(shipment, timelines[shipment.shipment_id])]
    for moment in open_at:
        if not any(_streaming_at(c, moment) for s in followed for c in s.connections):
            problems.append(f"no stream was open at {moment:.2f} (during the fault)")
    assert followed, "no stream was followed"
    assert sum(len(s.events) for s in followed) > 0, "no stream heard any event"
    assert not problems, f"{len(problems)} stream violations:\n" + "\n".join(problems[:50])


def _streaming_at(connection: Connection, moment: float) -> bool:
    return (
        connection.status == 200
        and connection.answered is not None
        and connection.answered <= moment
        and (connection.ended is None or connection.ended >= moment)
    )


def _connection(connection: Connection, deadline_seconds: float) -> list[str]:
    problems = []
    if connection.traceback:
        problems.append(f"a traceback in the stream: {connection}")
    if connection.status is None:
        assert connection.ended is not None
        waited = connection.ended - connection.started
        if connection.ending == "abandoned" and waited <= deadline_seconds:
            return problems  # the client closed it first, before the deadline had passed
        return [*problems, f"no response: {connection}"]
    assert connection.answered is not None
    if connection.answered - connection.started > deadline_seconds:
        problems.append(f"answered after the {deadline_seconds}s deadline: {connection}")
    if connection.status == 200:
        if connection.ending not in CLEAN_ENDINGS:
            problems.append(f"ended without a retry hint or a terminal event: {connection}")
    elif connection.status in REFUSALS:
        if not connection.content_type.startswith("application/problem+json") or not (
            connection.code
        ):
            problems.append(f"refused without a problem+json code: {connection}")
    elif connection.status != 204:
        problems.append(f"answered {connection.status}: {connection}")
    return problems


def _heard(shipment: FollowedShipment, stored: list[tuple[int, str]]) -> list[str]:
    problems = []
    heard = [(sequence, status) for _, sequence, status in shipment.events]
    if [sequence for sequence, _ in heard] != list(range(1, len(heard) + 1)):
        problems.append(f"heard sequences {[s for s, _ in heard]}: not 1..n, each once")
    elif heard != stored[: len(heard)]:
        problems.append(f"heard {heard}, not a prefix of the stored timeline {stored}")
    wrong_ids = [(i, s) for i, s, _ in shipment.events if i != str(s)]
    if wrong_ids:
        problems.append(f"events whose id is not their sequence: {wrong_ids}")
    if shipment.finished and (
        not stored or len(heard) != len(stored) or stored[-1][1] not in TERMINAL
    ):
        problems.append(f"a 204 after hearing {heard} of {stored}")
    return problems
