"""A moderate, mixed load against a served app that records every exchange and acknowledged write.

Sellers create (with an Idempotency-Key, retried after an unclear outcome), list, read and cancel
shipments; partners walk their shipments through the status machine (delivery codes read from
the outbox, as a recipient would from the email); account clients sign up, log in, log out and
check that the logged-out token is refused; a probe polls /health/ready; stream followers keep
live-update streams open on the shipments being created (tests/faults/streams.py). What they saw
goes into `records`.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PASSWORD, account_with_token, bearer, seller_body, unique_email
from tests.faults.records import EXPECTED_CONFLICTS, Exchange, Ledger, problem_code
from tests.faults.streams import CATCH_UP_SECONDS, StreamFollowers, Target
from tests.shipments.factories import DESTINATION_ZIP, shipment_body

WRITES = frozenset({"create", "advance", "scan", "cancel", "signup", "logout"})
# The share of the partners' steps sent as a batch of one scan (POST /scans) instead of a PATCH.
SCAN_SHARE = 0.3
# A client's pause after a 503 or a failed exchange (it would honour Retry-After; shorter here).
BACKOFF_SECONDS = 0.1
READINESS_INTERVAL_SECONDS = 0.05
WEBHOOK_URL = "http://127.0.0.1:9/shiptrack-hooks"
STOP_SECONDS = 30.0
WARM_UP_WRITES = 30


@dataclass(frozen=True, slots=True)
class Account:
    kind: str
    id: str
    email: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Cast:
    """Accounts made before the load: sellers (each with a webhook endpoint) and partners."""

    sellers: list[Account]
    partners: list[Account]


async def populate(
    http: httpx.AsyncClient, ledger: Ledger, *, sellers: int, partners: int, capacity: int
) -> Cast:
    cast = Cast([], [])
    for _ in range(sellers):
        seller, headers = await account_with_token(http, "seller")
        # Every event of this seller then also queues a webhook delivery in the outbox.
        hook = await http.post("/seller/webhooks", json={"url": WEBHOOK_URL}, headers=headers)
        assert hook.status_code == 201, hook.text
        cast.sellers.append(Account("seller", seller["id"], seller["email"], headers))
        ledger.accounts[seller["id"]] = "seller"
    for _ in range(partners):
        partner, headers = await account_with_token(
            http,
            "partner",
            serviceable_zip_codes=[DESTINATION_ZIP],
            max_handling_capacity=capacity,
        )
        cast.partners.append(Account("partner", partner["id"], partner["email"], headers))
        ledger.accounts[partner["id"]] = "partner"
    return cast


# The partner's next step from each status, with weights.
NEXT_STEPS: dict[str, list[tuple[str, float]]] = {
    "placed": [("in_transit", 1.0)],
    "in_transit": [("out_for_delivery", 0.7), ("returned", 0.15), ("in_transit", 0.15)],
    "out_for_delivery": [("delivered", 0.8), ("in_transit", 0.2)],
}


class Load:
    """Runs the actors until stopped; everything they saw is in `exchanges` and `ledger`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        cast: Cast,
        ledger: Ledger,
        inspector: AsyncEngine,
        *,
        account_clients: int = 2,
        streams: int = 12,
        seed: int = 20_240_601,
    ) -> None:
        self.http = http
        self.cast = cast
        self.ledger = ledger
        self.exchanges: list[Exchange] = []
        self._inspector = inspector
        self._account_clients = account_clients
        self._seed = seed
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stampede_over = asyncio.Event()
        self._stampeding: list[asyncio.Task[None]] = []
        # Acknowledged creates, oldest first: what the stream followers choose from.
        self.created: list[dict[str, Any]] = []
        self.streams = StreamFollowers(http, self._stream_target, streams)
        # Streams still open when the load stopped that never heard every stored event.
        self.streams_behind: list[str] = []
        # /health/ready bodies: (when answered, the checks)
        self.readiness_checks: list[tuple[float, dict[str, str]]] = []

    # --- running -------------------------------------------------------------------------

    def start(self) -> None:
        actors = [
            *(self._seller(s, i) for i, s in enumerate(self.cast.sellers)),
            *(self._partner(p, i) for i, p in enumerate(self.cast.partners)),
            *(self._accounts(i) for i in range(self._account_clients)),
            self._probe_readiness(),
        ]
        self._tasks = [asyncio.create_task(actor) for actor in actors]
        self.streams.start()

    async def stop(self) -> None:
        """Stop every actor (a stampede too); returns once each request has been answered, and
        the open streams have heard every stored event (or CATCH_UP_SECONDS passed)."""
        self._stopping.set()
        self._stampede_over.set()
        try:
            async with asyncio.timeout(STOP_SECONDS):
                await asyncio.gather(*self._tasks, *self._stampeding)
            self.streams.stop_choosing()
            self.streams_behind = await self._streams_caught_up()
        finally:
            await self.streams.close()

    async def wait_for(
        self, condition: Callable[[], bool], limit_seconds: float, what: str
    ) -> None:
        """Poll `condition` while the load runs; fail after `limit_seconds` (a hang guard)."""
        deadline = time.monotonic() + limit_seconds
        while not condition():
            for task in [*self._tasks, *self._stampeding]:
                if task.done():
                    task.result()  # an actor crashed: show why
            if (crash := self.streams.crashed()) is not None:
                raise crash
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {limit_seconds}s waiting for {what}")
            await asyncio.sleep(0.02)

    # --- reading the record --------------------------------------------------------------

    def warmed_up(self, since: float) -> bool:
        """Writes succeed, and most streams are open (a fault then meets them)."""
        streaming = self.streams.open_at(time.monotonic())
        return self.successes(since) >= WARM_UP_WRITES and 2 * streaming >= self.streams.count

    def since(self, moment: float, operations: Iterable[str] | None = None) -> list[Exchange]:
        wanted = set(operations) if operations is not None else None
        return [
            e
            for e in self.exchanges
            if e.started >= moment and (wanted is None or e.operation in wanted)
        ]

    def successes(self, since: float, operations: Iterable[str] = WRITES) -> int:
        return sum(e.succeeded for e in self.since(since, operations))

    def unavailable(self, since: float) -> int:
        return sum(e.unavailable for e in self.since(since) if e.operation != "ready")

    def readiness(self, started_after: float, finished_before: float = float("inf")) -> list[int]:
        return [
            e.status if e.status is not None else -1
            for e in self.exchanges
            if e.operation == "ready"
            and e.started >= started_after
            and e.finished <= finished_before
        ]

    # --- exchanges -----------------------------------------------------------------------

    async def _call(
        self, actor: str, operation: str, method: str, url: str, **kwargs: Any
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as error:
            self.exchanges.append(
                Exchange(actor, operation, started, time.monotonic(), None, None, repr(error))
            )
            await asyncio.sleep(BACKOFF_SECONDS)
            return None
        exchange = Exchange(
            actor,
            operation,
            started,
            time.monotonic(),
            response.status_code,
            problem_code(response) if response.status_code >= 400 else None,
            None,
        )
        self.exchanges.append(exchange)
        if response.status_code >= 500:
            await asyncio.sleep(BACKOFF_SECONDS)
        return response

    # --- actors --------------------------------------------------------------------------

    async def _seller(self, seller: Account, index: int) -> None:
        rng = random.Random(self._seed + index)
        actor = f"seller-{index}"
        own: list[str] = []
        # A create whose outcome is unknown: retried with the same key and body until known.
        retry: tuple[str, dict[str, Any]] | None = None
        while not self._stopping.is_set():
            roll = rng.random()
            if retry is not None or roll < 0.5 or not own:
                retry, created = await self._create(actor, seller, retry)
                if created is not None and created not in own:
                    own.append(created)
            elif roll < 0.65:
                await self._call(actor, "list", "GET", "/shipments", headers=seller.headers)
            elif roll < 0.85:
                shipment_id = rng.choice(own)
                await self._call(
                    actor, "read", "GET", f"/shipments/{shipment_id}", headers=seller.headers
                )
            else:
                await self._write_shipment(
                    actor, "cancel", "POST", rng.choice(own), "/cancel", seller.headers, None
                )

    async def _create(
        self, actor: str, seller: Account, retry: tuple[str, dict[str, Any]] | None
    ) -> tuple[tuple[str, dict[str, Any]] | None, str | None]:
        """One create (or the retry of an unclear one): (what to retry next, the created id)."""
        key, body = retry or (uuid.uuid4().hex, shipment_body())
        response = await self._call(
            actor,
            "create",
            "POST",
            "/shipments",
            json=body,
            headers={**seller.headers, "Idempotency-Key": key},
        )
        if response is None or response.status_code == 503:
            return (key, body), None
        if response.status_code == 201:
            created = response.json()
            self.ledger.shipment(created["id"]).ack(created)
            self.created.append(created)
            return None, str(created["id"])
        return None, None

    def stampede(self, clients: int) -> None:
        """`clients` more sellers' clients creating without a pause, until `end_stampede`."""

        async def creating(index: int) -> None:
            seller = self.cast.sellers[index % len(self.cast.sellers)]
            retry: tuple[str, dict[str, Any]] | None = None
            while not self._stampede_over.is_set():
                retry, _ = await self._create(f"stampede-{index}", seller, retry)

        self._start_stampede(creating, clients)

    def auth_stampede(self, clients: int) -> None:
        """`clients` more clients of the load's accounts, each reading its account (a token
        check on Redis) and logging in (rate-limit counters on Redis) without a pause, until
        `end_stampede`."""
        accounts = [*self.cast.sellers, *self.cast.partners]

        async def authenticating(index: int) -> None:
            account = accounts[index % len(accounts)]
            actor = f"auth-stampede-{index}"
            credentials = {"username": account.email, "password": PASSWORD}
            while not self._stampede_over.is_set():
                await self._call(actor, "me", "GET", f"/{account.kind}/me", headers=account.headers)
                await self._call(actor, "login", "POST", f"/{account.kind}/token", data=credentials)

        self._start_stampede(authenticating, clients)

    def _start_stampede(
        self, client: Callable[[int], Coroutine[Any, Any, None]], clients: int
    ) -> None:
        self._stampede_over.clear()
        self._stampeding = [asyncio.create_task(client(i)) for i in range(clients)]

    async def end_stampede(self) -> None:
        """Stop the stampede; returns once each of its requests has been answered."""
        self._stampede_over.set()
        async with asyncio.timeout(STOP_SECONDS):
            await asyncio.gather(*self._stampeding)
        self._stampeding = []

    async def _partner(self, partner: Account, index: int) -> None:
        rng = random.Random(self._seed + 1000 + index)
        actor = f"partner-{index}"
        while not self._stopping.is_set():
            status = rng.choice(list(NEXT_STEPS))
            page = await self._call(
                actor,
                "list",
                "GET",
                "/shipments",
                params={"status": status, "limit": 5},
                headers=partner.headers,
            )
            if page is None or page.status_code != 200 or not page.json()["items"]:
                continue
            shipment = rng.choice(page.json()["items"])
            steps, weights = zip(*NEXT_STEPS[status], strict=True)
            target = rng.choices(steps, weights)[0]
            body: dict[str, Any] = {"status": target, "location_zip": DESTINATION_ZIP}
            if (status, target) == ("out_for_delivery", "in_transit"):
                body["failure_reason"] = "recipient_unavailable"  # a failed delivery attempt
            if target == "delivered":
                code = await self._delivery_code(shipment["id"])
                if code is None:
                    continue  # the outbox cannot be read right now: the database is down
                body["verification_code"] = code
            if rng.random() < SCAN_SHARE:
                await self._scan(actor, partner, shipment, body)
                continue
            await self._write_shipment(
                actor, "advance", "PATCH", shipment["id"], "", partner.headers, body
            )

    async def _scan(
        self, actor: str, partner: Account, shipment: dict[str, Any], body: dict[str, Any]
    ) -> None:
        """The step as a batch of one scan, sent once more when its answer was lost, as a van
        would: its `scan_id` makes the second try safe (at most one event per scan id)."""
        scan_id = uuid.uuid4().hex
        scan = {**body, "scan_id": scan_id, "tracking_number": shipment["tracking_number"]}
        for _ in range(2):
            response = await self._call(
                actor, "scan", "POST", "/scans", json={"scans": [scan]}, headers=partner.headers
            )
            if response is not None and response.status_code == 200:
                self._record_scan(shipment["id"], scan, response.json()["results"][0])
                return
        self.ledger.shipment(shipment["id"]).ambiguous += 1

    def _record_scan(self, shipment_id: str, scan: dict[str, Any], result: dict[str, Any]) -> None:
        if result["result"] == "rejected":
            problem = result["problem"]
            if not (problem["status"] == 409 and problem["code"] in EXPECTED_CONFLICTS):
                self.ledger.refused_scans.append(f"{scan['scan_id']}: {problem}")
            return
        self.ledger.scans[scan["scan_id"]] = (shipment_id, result["sequence"])
        # A failed attempt may return the shipment by itself: a second version.
        self.ledger.shipment(shipment_id).unviewed += 2 if "failure_reason" in scan else 1

    async def _write_shipment(
        self,
        actor: str,
        operation: str,
        method: str,
        shipment_id: str,
        suffix: str,
        headers: dict[str, str],
        body: dict[str, Any] | None,
    ) -> None:
        response = await self._call(
            actor,
            operation,
            method,
            f"/shipments/{shipment_id}{suffix}",
            json=body,
            headers=headers,
        )
        if response is None or response.status_code == 503:
            self.ledger.shipment(shipment_id).ambiguous += 1
        elif response.status_code == 200:
            self.ledger.shipment(shipment_id).ack(response.json())

    async def _delivery_code(self, shipment_id: str) -> str | None:
        """The code of the newest delivery-code email, read from the outbox; None if it cannot
        be read (the database is down) or is gone (the worker erases it once the email is sent)."""
        query = text(
            "SELECT payload ->> 'verification_code' FROM outbox_messages"
            " WHERE shipment_id = :id AND kind = 'email'"
            " AND payload ->> 'template' = 'delivery_code'"
            " ORDER BY created_at DESC, id DESC LIMIT 1"
        )
        try:
            async with asyncio.timeout(2.0), self._inspector.connect() as connection:
                code = await connection.scalar(query, {"id": uuid.UUID(shipment_id)})
        except Exception:  # any database failure: this round is skipped
            return None
        return code if isinstance(code, str) else None

    async def _accounts(self, index: int) -> None:
        """Sign up, log in, use the token, log out, and check the token is then refused."""
        actor = f"accounts-{index}"
        round_number = 0
        while not self._stopping.is_set():
            round_number += 1
            kind = "seller" if (index + round_number) % 2 else "partner"
            body: dict[str, Any] = (
                seller_body()
                if kind == "seller"
                else {
                    "name": "Night Couriers",
                    "email": unique_email("partner"),
                    "password": PASSWORD,
                    # Not the load's zip code: these partners take no shipments.
                    "serviceable_zip_codes": ["99999"],
                    "max_handling_capacity": 1,
                }
            )
            signup = await self._call(actor, "signup", "POST", f"/{kind}/signup", json=body)
            if signup is None or signup.status_code != 201:
                continue
            self.ledger.accounts[signup.json()["id"]] = kind
            login = await self._call(
                actor,
                "login",
                "POST",
                f"/{kind}/token",
                data={"username": body["email"], "password": PASSWORD},
            )
            if login is None or login.status_code != 200:
                continue
            headers = bearer(login.json()["access_token"])
            await self._call(actor, "me", "GET", f"/{kind}/me", headers=headers)
            logout = await self._call(actor, "logout", "POST", f"/{kind}/logout", headers=headers)
            if logout is None or logout.status_code != 204:
                continue
            self.ledger.revoked.append((kind, headers))
            # Must be 401 (or 503 if Redis just went away): never 200.
            await self._call(actor, "me_revoked", "GET", f"/{kind}/me", headers=headers)

    async def _probe_readiness(self) -> None:
        while not self._stopping.is_set():
            response = await self._call("probe", "ready", "GET", "/health/ready")
            if response is not None and response.status_code in (200, 503):
                self.readiness_checks.append((time.monotonic(), response.json()["checks"]))
            await asyncio.sleep(READINESS_INTERVAL_SECONDS)

    # --- streams -------------------------------------------------------------------------

    def _stream_target(self, kind: str, seen: set[str]) -> Target | None:
        """The newest created shipment not followed yet, with what a `kind` follower needs."""
        for created in reversed(self.created):
            if created["id"] in seen:
                continue
            if kind == "public":
                return created["id"], {}, f"/track/{created['tracking_number']}/stream"
            accounts = self.cast.sellers if kind == "seller" else self.cast.partners
            owner_id = created["seller_id"] if kind == "seller" else created["partner"]["id"]
            account = next(a for a in accounts if a.id == owner_id)
            return created["id"], account.headers, f"/shipments/{created['id']}/stream"
        return None

    async def _streams_caught_up(self) -> list[str]:
        """Wait until every open stream has heard its shipment's whole stored timeline; the
        ones that never did within CATCH_UP_SECONDS (a live update lost for good)."""
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while True:
            behind = []
            for followed in self.streams.current():
                stored = await self._stored_events(followed.shipment_id)
                if len(followed.events) < stored:
                    behind.append(f"{followed}: heard {len(followed.events)} of {stored} events")
            if not behind or time.monotonic() > deadline:
                return behind
            await asyncio.sleep(0.1)

    async def _stored_events(self, shipment_id: str) -> int:
        query = text("SELECT count(*) FROM shipment_events WHERE shipment_id = :id")
        async with asyncio.timeout(2.0), self._inspector.connect() as connection:
            return int(await connection.scalar(query, {"id": uuid.UUID(shipment_id)}) or 0)
