"""bcrypt: stored as cost-12 hashes, computed on worker threads, same work for every failed login.

The bcrypt calls are observed, not replaced: a profile hook on the app's hashing threads records
each `CryptContext.hash`/`verify` call (which thread, which hash, when it returned). If hashing
ever moved onto the event loop thread, the hook would see nothing and these tests would fail.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import bcrypt
import httpx
from passlib.context import CryptContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.accounts.passwords import HASHING_NICENESS
from backend.main import create_app
from tests.conftest import make_settings, running_client
from tests.factories import PASSWORD, log_in, partner_body, seller_body, sign_up, unique_email

_VERIFY_CODE = CryptContext.verify.__code__
_HASH_CODE = CryptContext.hash.__code__


@dataclass
class BcryptCall:
    thread_id: int
    kind: str  # "hash" or "verify"
    verified_hash: str | None = None
    # The thread's `nice` value while it hashed.
    niceness: int = 0


@dataclass
class BcryptObserver:
    """Records every passlib hash/verify on the worker threads it watches."""

    calls: list[BcryptCall] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def profile(self, frame: FrameType, event: str, _arg: object) -> None:
        code = frame.f_code
        if code is not _VERIFY_CODE and code is not _HASH_CODE:
            return
        if event == "call":
            kind = "verify" if code is _VERIFY_CODE else "hash"
            verified = frame.f_locals.get("hash") if kind == "verify" else None
            call = BcryptCall(
                threading.get_ident(),
                kind,
                verified if isinstance(verified, str) else None,
                os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
            )
            with self._lock:
                self.calls.append(call)
            self.started.set()
        elif event == "return":
            self.finished.set()

    def of_kind(self, kind: str) -> list[BcryptCall]:
        with self._lock:
            return [call for call in self.calls if call.kind == kind]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
        self.started.clear()
        self.finished.clear()


@contextmanager
def observing_new_threads(observer: BcryptObserver) -> Iterator[None]:
    """Give every thread started from here on the observer's profile hook: create the app
    inside, so that its hashing threads (started on demand) carry it."""
    threading.setprofile(observer.profile)
    try:
        yield
    finally:
        threading.setprofile(None)


def login_form(email: str, password: str = PASSWORD) -> dict[str, str]:
    return {"username": email, "password": password}


def bcrypt_cost(password_hash: str) -> int:
    # "$2b$12$<53 characters>"
    prefix, cost = password_hash.split("$")[1:3]
    assert prefix == "2b", password_hash
    return int(cost)


async def stored_hash(engine: AsyncEngine, table: str, email: str) -> str:
    async with engine.connect() as connection:
        value = await connection.scalar(
            text(f"SELECT password_hash FROM {table} WHERE email = :email"),  # noqa: S608
            {"email": email},
        )
    assert isinstance(value, str)
    return value


async def stored_row(engine: AsyncEngine, table: str, email: str) -> dict[str, Any]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text(f"SELECT * FROM {table} WHERE email = :email"),  # noqa: S608
            {"email": email},
        )
        row = result.mappings().one()
    return dict(row)


async def wait_until_bcrypt_runs(observer: BcryptObserver, request: asyncio.Task[Any]) -> None:
    """Yield to the loop until a worker thread has entered bcrypt for `request`."""
    while not observer.started.is_set():
        assert not request.done(), (
            "the request finished without hashing on a worker thread: bcrypt ran on the loop"
        )
        await asyncio.sleep(0.001)


async def test_login_verification_runs_off_the_event_loop(
    database_url: str, redis_url: str
) -> None:
    settings = make_settings(database_url, redis_url, bcrypt_rounds=12)
    observer = BcryptObserver()
    with observing_new_threads(observer):
        async with running_client(create_app(settings)) as http:
            account = await sign_up(http, "seller")
            observer.reset()  # the start-up decoy and the sign-up
            login = asyncio.create_task(
                http.post("/seller/token", data=login_form(account["email"]))
            )
            await wait_until_bcrypt_runs(observer, login)
            health = await http.get("/health/live")
            # Recorded the moment the health response is in hand.
            bcrypt_still_running = not observer.finished.is_set()
            login_still_running = not login.done()
            response = await login

    assert health.status_code == 200
    assert response.status_code == 200, response.text
    # The loop answered another request while the password was being checked.
    assert bcrypt_still_running
    assert login_still_running
    verifications = observer.of_kind("verify")
    assert len(verifications) == 1
    assert verifications[0].thread_id != threading.get_ident()
    # And, where `nice` is per thread (Linux), at a lower CPU priority than the event loop.
    loop_niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if sys.platform.startswith("linux"):
        assert verifications[0].niceness == HASHING_NICENESS > loop_niceness


async def test_signup_hashing_runs_off_the_event_loop(database_url: str, redis_url: str) -> None:
    settings = make_settings(database_url, redis_url, bcrypt_rounds=12)
    observer = BcryptObserver()
    with observing_new_threads(observer):
        async with running_client(create_app(settings)) as http:
            observer.reset()  # the start-up decoy
            signup = asyncio.create_task(http.post("/seller/signup", json=seller_body()))
            await wait_until_bcrypt_runs(observer, signup)
            health = await http.get("/health/live")
            bcrypt_still_running = not observer.finished.is_set()
            signup_still_running = not signup.done()
            response = await signup

    assert health.status_code == 200
    assert response.status_code == 201, response.text
    assert bcrypt_still_running
    assert signup_still_running
    hashes = observer.of_kind("hash")
    assert len(hashes) == 1
    assert hashes[0].thread_id != threading.get_ident()


async def test_logins_waiting_for_a_hash_hold_no_database_connection(
    database_url: str, redis_url: str
) -> None:
    """A burst of logins queues for the hashing thread; a pool of one connection still serves
    a read at once, so the logins hold none while they wait for bcrypt or run it."""
    settings = make_settings(
        database_url,
        redis_url,
        bcrypt_rounds=12,
        password_hash_concurrency=1,
        db_pool_size=1,
        db_max_overflow=0,
        db_pool_timeout_seconds=0.2,  # well under one cost-12 hash
    )
    observer = BcryptObserver()
    with observing_new_threads(observer):
        async with running_client(create_app(settings)) as http:
            account = await sign_up(http, "seller")
            token = await log_in(http, "seller", account["email"])
            observer.reset()
            logins = [
                asyncio.create_task(http.post("/seller/token", data=login_form(account["email"])))
                for _ in range(3)
            ]
            await wait_until_bcrypt_runs(observer, logins[0])
            read = await http.get("/shipments", headers={"Authorization": f"Bearer {token}"})
            logins_still_running = sum(not login.done() for login in logins)
            answers = await asyncio.gather(*logins)

    assert read.status_code == 200, read.text
    # Three cost-12 hashes one after another: at least two were still queued or running.
    assert logins_still_running >= 2
    assert [answer.status_code for answer in answers] == [200, 200, 200]


async def test_passwords_are_stored_as_cost_12_bcrypt_hashes(
    database_url: str, redis_url: str, db_engine: AsyncEngine
) -> None:
    settings = make_settings(database_url, redis_url, bcrypt_rounds=12)
    async with running_client(create_app(settings)) as http:
        seller = await sign_up(http, "seller")
        partner = await sign_up(http, "partner")

    for table, account in (("sellers", seller), ("partners", partner)):
        password_hash = await stored_hash(db_engine, table, account["email"])
        assert password_hash.startswith("$2b$12$"), password_hash
        assert len(password_hash) == 60
        assert bcrypt.checkpw(PASSWORD.encode(), password_hash.encode())
        assert not bcrypt.checkpw(b"not the password", password_hash.encode())
        # The clear password is nowhere in the row, and never in a response.
        row = await stored_row(db_engine, table, account["email"])
        assert all(PASSWORD not in str(value) for value in row.values())
        assert "password_hash" not in account
        assert all(
            PASSWORD not in str(value) for key, value in account.items() if key != "password"
        )


async def test_same_password_gets_a_different_salt(
    client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    first = await sign_up(client, "seller")
    second = await sign_up(client, "seller")
    first_hash = await stored_hash(db_engine, "sellers", first["email"])
    second_hash = await stored_hash(db_engine, "sellers", second["email"])
    assert first_hash != second_hash
    # The session app uses the cost from its settings (4, to keep tests quick).
    assert bcrypt_cost(first_hash) == 4


async def test_unknown_email_and_wrong_password_cost_one_equal_verification(
    database_url: str, redis_url: str, db_engine: AsyncEngine
) -> None:
    settings = make_settings(database_url, redis_url, bcrypt_rounds=5)
    observer = BcryptObserver()
    with observing_new_threads(observer):
        async with running_client(create_app(settings)) as http:
            account = await sign_up(http, "seller")
            account_hash = await stored_hash(db_engine, "sellers", account["email"])
            observer.reset()  # the start-up decoy and the sign-up
            # Unknown email first: the decoy must already exist (computed at start-up), so even
            # the first unknown email costs one verification and no extra hash.
            unknown = await http.post(
                "/seller/token", data=login_form(unique_email("nobody"), "whatever-password")
            )
            unknown_calls = list(observer.calls)
            observer.reset()

            wrong = await http.post(
                "/seller/token", data=login_form(account["email"], "whatever-password")
            )
            wrong_calls = list(observer.calls)
            observer.reset()

            right = await http.post("/seller/token", data=login_form(account["email"]))
            right_calls = list(observer.calls)

    assert unknown.status_code == 401
    assert wrong.status_code == 401
    assert right.status_code == 200

    for calls in (unknown_calls, wrong_calls, right_calls):
        assert [call.kind for call in calls] == ["verify"], calls
    assert wrong_calls[0].verified_hash == account_hash
    assert right_calls[0].verified_hash == account_hash
    decoy = unknown_calls[0].verified_hash
    assert decoy is not None
    assert decoy != account_hash
    # Same algorithm at the same cost: the same amount of work as a real account.
    assert bcrypt_cost(decoy) == bcrypt_cost(account_hash) == 5

    # And the client cannot tell the two failures apart.
    unknown_problem = unknown.json()
    wrong_problem = wrong.json()
    assert unknown_problem["code"] == wrong_problem["code"] == "invalid_credentials"
    unknown_problem.pop("request_id")
    wrong_problem.pop("request_id")
    assert unknown_problem == wrong_problem
    assert unknown.headers.get("www-authenticate") == wrong.headers.get("www-authenticate")
    assert unknown.headers.get("www-authenticate") == "Bearer"


async def test_partner_login_costs_one_verification_for_unknown_email(
    database_url: str, redis_url: str
) -> None:
    settings = make_settings(database_url, redis_url, bcrypt_rounds=5)
    observer = BcryptObserver()
    with observing_new_threads(observer):
        async with running_client(create_app(settings)) as http:
            await sign_up(http, "partner")
            observer.reset()  # the start-up decoy and the sign-up
            for _ in range(2):
                response = await http.post(
                    "/partner/token", data=login_form(unique_email("ghost"), "whatever-password")
                )
                assert response.status_code == 401
    assert [call.kind for call in observer.calls] == ["verify", "verify"]
    # Both attempts used the same start-up decoy, never a fresh hash.
    assert observer.calls[0].verified_hash == observer.calls[1].verified_hash


async def test_overlong_passwords_are_refused_before_bcrypt(
    database_url: str, redis_url: str
) -> None:
    settings = make_settings(database_url, redis_url, bcrypt_rounds=5)
    too_long = "é" * 37  # 37 characters, 74 bytes: over bcrypt's 72-byte limit
    observer = BcryptObserver()
    with observing_new_threads(observer):
        async with running_client(create_app(settings)) as http:
            account = await sign_up(http, "seller")
            observer.reset()  # the start-up decoy and the sign-up
            signup = await http.post("/seller/signup", json=seller_body(password=too_long))
            partner = await http.post("/partner/signup", json=partner_body(password=too_long))
            login = await http.post("/seller/token", data=login_form(account["email"], too_long))
    for response in (signup, partner, login):
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_failed"
    assert observer.calls == []
