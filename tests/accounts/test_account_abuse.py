"""Abuse of the account endpoints: refused work costs no bcrypt, the hashing queue is bounded,
guesses from elsewhere do not lock the owner out, and account emails are capped per day.

Client addresses are told apart by the ASGI client address, as uvicorn reports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from backend.main import create_app
from tests.accounts.test_account_emails import (
    NEW_PASSWORD,
    expired,
    login_response,
    queued_emails,
    reset,
    reset_token_for,
    stored_account,
    token_of,
    verify_url_for,
)
from tests.accounts.test_password_hashing import (
    BcryptObserver,
    observing_new_threads,
    wait_until_bcrypt_runs,
)
from tests.assertions import assert_problem
from tests.conftest import make_settings, running_client
from tests.factories import PASSWORD, bearer, log_in, sign_up

KINDS = ["seller", "partner"]
OWNER_ADDRESS = "198.51.100.10"


@asynccontextmanager
async def client_from(app: FastAPI, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests come from `address` (the app's lifespan already runs)."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def guess(http: httpx.AsyncClient, email: str) -> httpx.Response:
    return await http.post("/seller/token", data={"username": email, "password": "a wrong guess"})


def assert_rate_limited(response: httpx.Response) -> None:
    assert_problem(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) > 0


# --- reset: every refusal before any hash -------------------------------------------------------


async def test_refused_resets_cost_no_password_hash(
    database_url: str, redis_url: str, db_engine: AsyncEngine
) -> None:
    # The first reset and the five refusals below fit in the budget; the sixth refusal does not.
    settings = make_settings(database_url, redis_url, token_attempts_per_ip=6)
    observer = BcryptObserver()
    with observing_new_threads(observer):
        async with running_client(create_app(settings)) as http:
            account = await sign_up(http, "seller")
            used = await reset_token_for(http, db_engine, "seller", account["email"])
            assert (await reset(http, "seller", used)).status_code == 204
            fresh = await reset_token_for(http, db_engine, "seller", account["email"])
            observer.reset()

            refused = [
                await reset(http, "seller", used),  # replayed
                await reset(http, "seller", expired(settings, fresh)),
                await reset(http, "partner", fresh),  # another kind's endpoint
                await reset(http, "seller", "not-a-token"),
                await reset(http, "seller", used),
                await reset(http, "seller", fresh),  # over the per-address budget
            ]
            stored = await stored_account(db_engine, "seller", account["id"])

    for response in refused[:-1]:
        assert_problem(response, 400, "invalid_link_token")
    assert_rate_limited(refused[-1])
    assert observer.of_kind("hash") == []
    assert stored["token_version"] == 1  # only the first reset


async def test_reset_attempts_beyond_the_per_address_limit_get_429_and_change_nothing(
    app: FastAPI, client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    account = await sign_up(client, "partner")
    token = await reset_token_for(client, db_engine, "partner", account["email"])
    before = await stored_account(db_engine, "partner", account["id"])
    async with client_from(app, "203.0.113.9") as attacker:
        for _ in range(settings.token_attempts_per_ip):
            assert_problem(await reset(attacker, "partner", "forged"), 400, "invalid_link_token")
        assert_rate_limited(await reset(attacker, "partner", token))
    assert await stored_account(db_engine, "partner", account["id"]) == before
    # The owner's own address has a budget of its own.
    assert (await reset(client, "partner", token)).status_code == 204


@pytest.mark.parametrize("kind", KINDS)
async def test_verify_attempts_beyond_the_per_address_limit_get_429(
    app: FastAPI, client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, kind: str
) -> None:
    account = await sign_up(client, kind)
    token = token_of(await verify_url_for(db_engine, kind, account["email"]))
    async with client_from(app, "203.0.113.9") as attacker:
        for _ in range(settings.token_attempts_per_ip):
            forged = await attacker.get(f"/{kind}/verify", params={"token": "forged"})
            assert_problem(forged, 400, "invalid_link_token")
        assert_rate_limited(await attacker.get(f"/{kind}/verify", params={"token": token}))
    assert (await stored_account(db_engine, kind, account["id"]))["email_verified_at"] is None
    assert (await client.get(f"/{kind}/verify", params={"token": token})).status_code == 200


# --- the hashing queue ------------------------------------------------------------------------


async def test_a_full_hashing_queue_answers_503_with_retry_after_and_counts_no_attempt(
    database_url: str, redis_url: str
) -> None:
    settings = make_settings(
        database_url,
        redis_url,
        bcrypt_rounds=12,  # a hash that lasts long enough to be waited for
        password_hash_concurrency=1,
        password_hash_queue_limit=1,
        token_attempts_per_account_and_ip=5,  # the five logins below, counted at once
    )
    observer = BcryptObserver()
    with observing_new_threads(observer):
        async with running_client(create_app(settings)) as http:
            account = await sign_up(http, "seller")
            observer.reset()
            form = {"username": account["email"], "password": PASSWORD}
            running = asyncio.create_task(http.post("/seller/token", data=form))
            await wait_until_bcrypt_runs(observer, running)
            # While that hash runs (a quarter of a second at least), one more may wait.
            burst = await asyncio.gather(*(http.post("/seller/token", data=form) for _ in range(4)))
            assert (await running).status_code == 200
            # Refused attempts were given back: the per-address budget of 5 is all still there.
            later = [await guess(http, account["email"]) for _ in range(5)]
            after = await http.post("/seller/token", data=form)

    assert sorted(response.status_code for response in burst) == [200, 503, 503, 503]
    for response in (response for response in burst if response.status_code == 503):
        assert_problem(response, 503, "password_hashing_busy")
        assert response.headers["retry-after"] == "1"
    assert [response.status_code for response in later] == [401] * 5
    assert_rate_limited(after)


# --- login: per account and address, and a higher cap per account -------------------------------


async def test_guesses_from_other_addresses_do_not_lock_out_the_owner_until_the_account_cap(
    database_url: str, redis_url: str
) -> None:
    settings = make_settings(
        database_url,
        redis_url,
        token_attempts_per_account_and_ip=3,
        token_attempts_per_account=8,
        token_attempts_per_ip=1000,
    )
    app = create_app(settings)
    async with running_client(app) as http:
        account = await sign_up(http, "seller")
        email = account["email"]
        async with (
            client_from(app, OWNER_ADDRESS) as owner,
            client_from(app, "203.0.113.1") as first,
            client_from(app, "203.0.113.2") as second,
            client_from(app, "203.0.113.3") as third,
        ):
            # One address: its own cap, then 429 for it alone.
            first_guesses = [await guess(first, email) for _ in range(4)]
            assert (await log_in(owner, "seller", email)) is not None
            owner_mistake = await guess(owner, email)
            # More addresses: the account's total climbs to its cap of 8.
            second_guesses = [await guess(second, email) for _ in range(3)]
            third_guesses = [await guess(third, email) for _ in range(2)]
            owner_locked = await owner.post(
                "/seller/token", data={"username": email, "password": PASSWORD}
            )

    assert [r.status_code for r in first_guesses] == [401, 401, 401, 429]
    assert_rate_limited(first_guesses[-1])
    assert_problem(owner_mistake, 401, "invalid_credentials")
    assert [r.status_code for r in second_guesses] == [401, 401, 401]
    # 3 + 1 (the owner's mistake) + 3 + 1 = 8: the next attempt, from anywhere, is refused.
    assert [r.status_code for r in third_guesses] == [401, 429]
    assert_rate_limited(owner_locked)


# --- account emails per day -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_verification_resend_sends_until_the_daily_cap_then_429(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, kind: str
) -> None:
    account = await sign_up(client, kind)
    headers = bearer(await log_in(client, kind, account["email"]))
    # The sign-up email counts towards the cap.
    resends = [
        await client.post(f"/{kind}/verify/resend", headers=headers)
        for _ in range(settings.verification_emails_per_account_per_day - 1)
    ]
    beyond = await client.post(f"/{kind}/verify/resend", headers=headers)

    assert [r.status_code for r in resends] == [202] * len(resends)
    assert_rate_limited(beyond)
    assert int(beyond.headers["retry-after"]) <= 24 * 3600
    sent = await queued_emails(db_engine, "verify_email", account["email"])
    assert len(sent) == settings.verification_emails_per_account_per_day
    # Each carries a working link.
    assert (
        await client.get(f"/{kind}/verify", params={"token": token_of(sent[-1]["verify_url"])})
    ).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
async def test_verification_resend_for_a_verified_address_is_409_and_sends_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    account = await sign_up(client, kind)
    token = token_of(await verify_url_for(db_engine, kind, account["email"]))
    assert (await client.get(f"/{kind}/verify", params={"token": token})).status_code == 200
    headers = bearer(await log_in(client, kind, account["email"]))

    response = await client.post(f"/{kind}/verify/resend", headers=headers)

    assert_problem(response, 409, "email_already_verified")
    assert len(await queued_emails(db_engine, "verify_email", account["email"])) == 1


async def test_verification_resend_needs_the_accounts_token(client: httpx.AsyncClient) -> None:
    account = await sign_up(client, "seller")
    seller_token = await log_in(client, "seller", account["email"])
    assert_problem(await client.post("/seller/verify/resend"), 401, "not_authenticated")
    wrong_kind = await client.post("/partner/verify/resend", headers=bearer(seller_token))
    assert_problem(wrong_kind, 403, "wrong_account_kind")


async def test_a_reset_email_beyond_the_daily_cap_is_not_sent_and_the_answer_says_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings
) -> None:
    account = await sign_up(client, "seller")
    for _ in range(settings.reset_emails_per_account_per_day):
        await reset_token_for(client, db_engine, "seller", account["email"])
    beyond = await client.post("/seller/password/forgot", json={"email": account["email"]})
    unknown = await client.post("/seller/password/forgot", json={"email": "nobody@example.com"})

    assert (beyond.status_code, beyond.content) == (unknown.status_code, unknown.content)
    assert beyond.status_code == 202
    sent = await queued_emails(db_engine, "password_reset", account["email"])
    assert len(sent) == settings.reset_emails_per_account_per_day
    # The links already sent still work.
    assert (await reset(client, "seller", sent[-1]["reset_token"])).status_code == 204
    assert (
        await login_response(client, "seller", account["email"], NEW_PASSWORD)
    ).status_code == 200
