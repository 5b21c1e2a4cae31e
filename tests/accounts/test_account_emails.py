"""Account emails: the address verification link after sign-up, and the password reset.

The emails are read from the outbox (`outbox_messages.payload` holds the template name, the
recipient and the template variables); one end-to-end test renders them as the worker would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.config import Settings
from backend.main import create_app
from backend.outbox.email import EmailRenderer
from tests.assertions import assert_problem
from tests.conftest import make_settings, running_client
from tests.factories import PASSWORD, bearer, log_in, partner_body, seller_body, sign_up

KINDS = ["seller", "partner"]
OTHER_KIND = {"seller": "partner", "partner": "seller"}
TABLES = {"seller": "sellers", "partner": "partners"}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
NEW_PASSWORD = "a brand new passphrase"
# Headers that legitimately differ between two otherwise identical responses.
PER_REQUEST_HEADERS = {"x-request-id", "x-process-time"}


# Helpers


async def outbox_rows(engine: AsyncEngine) -> list[tuple[str, dict[str, Any]]]:
    """(kind, payload) of every queued message, oldest first."""
    async with engine.connect() as connection:
        query = text("SELECT kind, payload FROM outbox_messages ORDER BY created_at, id")
        return [(row.kind, dict(row.payload)) for row in await connection.execute(query)]


async def queued_emails(
    engine: AsyncEngine, template: str, to: str | None = None
) -> list[dict[str, Any]]:
    """Payloads of the queued emails built from `template` (to `to`, if given), oldest first."""
    return [
        payload
        for kind, payload in await outbox_rows(engine)
        if kind == "email" and payload["template"] == template and to in (None, payload["to"])
    ]


async def verify_url_for(engine: AsyncEngine, kind: str, email: str) -> str:
    """The link of the one verification email sent to `email` for an account of `kind`."""
    [message] = [
        message
        for message in await queued_emails(engine, "verify_email", email)
        if f"/{kind}/verify?" in message["verify_url"]
    ]
    url: str = message["verify_url"]
    return url


def link_path(url: str) -> str:
    """What a client requests when it follows `url` on the app under test."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def token_of(url: str) -> str:
    [token] = parse_qs(urlsplit(url).query)["token"]
    return token


async def verify_token_for(client: httpx.AsyncClient, engine: AsyncEngine, kind: str) -> str:
    """A new account of `kind`, and the token of the link its sign-up email carries."""
    account = await sign_up(client, kind)
    return token_of(await verify_url_for(engine, kind, account["email"]))


async def forgot(client: httpx.AsyncClient, kind: str, email: str) -> httpx.Response:
    return await client.post(f"/{kind}/password/forgot", json={"email": email})


async def reset(
    client: httpx.AsyncClient, kind: str, token: str, new_password: str = NEW_PASSWORD
) -> httpx.Response:
    return await client.post(
        f"/{kind}/password/reset", json={"token": token, "new_password": new_password}
    )


async def reset_token_for(
    client: httpx.AsyncClient, engine: AsyncEngine, kind: str, email: str
) -> str:
    """Asks for a reset of `email`'s `kind` account; the token of the email that follows."""
    before = await queued_emails(engine, "password_reset", email)
    response = await forgot(client, kind, email)
    assert response.status_code == 202, response.text
    after = await queued_emails(engine, "password_reset", email)
    assert len(after) == len(before) + 1
    assert f"/{kind}/password/reset" in after[-1]["reset_url"]
    token: str = after[-1]["reset_token"]
    return token


async def login_response(
    client: httpx.AsyncClient, kind: str, email: str, password: str
) -> httpx.Response:
    return await client.post(f"/{kind}/token", data={"username": email, "password": password})


async def stored_account(engine: AsyncEngine, kind: str, account_id: str) -> dict[str, Any]:
    async with engine.connect() as connection:
        query = text(
            f"SELECT email, password_hash, token_version, email_verified_at "  # noqa: S608
            f'FROM "{TABLES[kind]}" WHERE id = :id'
        )
        row = (await connection.execute(query, {"id": uuid.UUID(account_id)})).one()
        return dict(row._mapping)


def resigned(settings: Settings, token: str, *, key: str | None = None, **changes: Any) -> str:
    """`token` with some claims changed, signed again (with the app's key unless `key`)."""
    header = jwt.get_unverified_header(token)
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    claims.update(changes)
    signing_key = key or settings.jwt_secret_key.get_secret_value()
    return jwt.encode(claims, signing_key, algorithm="HS256", headers={"typ": header["typ"]})


def expired(settings: Settings, token: str) -> str:
    now = int(time.time())
    return resigned(settings, token, iat=now - 7200, exp=now - 3600)


def renewed(settings: Settings, token: str) -> str:
    """The same token with a fresh lifetime: shows that `expired` changed nothing else."""
    now = int(time.time())
    return resigned(settings, token, iat=now - 10, exp=now + 600)


async def twin_accounts(
    client: httpx.AsyncClient, engine: AsyncEngine, kind: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An account of `kind`, and one of the other kind with the same id, email and password hash.

    Only the audience of a link token then tells which kind it is for.
    """
    account = await sign_up(client, kind)
    other_kind = OTHER_KIND[kind]
    twin = await sign_up(client, other_kind, email=account["email"])
    async with engine.begin() as connection:
        await connection.execute(
            text(
                f'UPDATE "{TABLES[other_kind]}" SET id = :id, password_hash = '  # noqa: S608
                f'(SELECT password_hash FROM "{TABLES[kind]}" WHERE id = :id) '
                "WHERE id = :twin_id"
            ),
            {"id": uuid.UUID(account["id"]), "twin_id": uuid.UUID(twin["id"])},
        )
    twin["id"] = account["id"]
    return account, twin


def assert_json_verification(response: httpx.Response, email: str) -> datetime:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"email", "email_verified_at"}
    assert body["email"] == email
    verified_at = datetime.fromisoformat(body["email_verified_at"])
    assert verified_at.utcoffset() is not None
    return verified_at


def assert_link_refused(response: httpx.Response) -> None:
    assert_problem(response, 400, "invalid_link_token")


def assert_link_page_refused(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "This link does not work" in response.text
    assert "Email address confirmed" not in response.text


def assert_invalid_token(response: httpx.Response) -> None:
    assert_problem(response, 401, "invalid_token")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def without_per_request_headers(response: httpx.Response) -> dict[str, str]:
    return {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in PER_REQUEST_HEADERS
    }


def parts_of(message: EmailMessage) -> tuple[str, str]:
    """(text part, HTML part) of a rendered message."""
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None
    assert html is not None
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    return str(plain.get_content()), str(html.get_content())


def render(settings: Settings, payload: dict[str, Any]) -> EmailMessage:
    """Renders a queued email the way the outbox worker does."""
    context = {name: value for name, value in payload.items() if name not in ("template", "to")}
    return EmailRenderer(settings.public_base_url).render(
        payload["template"],
        payload["to"],
        context,
        sender=settings.email_from,
        message_id=uuid.uuid4(),
        written_at=datetime.now(UTC),
    )


# Sign-up: the verification email


@pytest.mark.parametrize("kind", KINDS)
async def test_sign_up_queues_one_verification_email_to_the_account(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, kind: str
) -> None:
    email = f"New-Account-{uuid.uuid4().hex[:8]}@Example.COM"
    account = await sign_up(client, kind, email=email, name="Ada Lovelace")
    assert account["email"] == email.lower()

    rows = await outbox_rows(db_engine)
    assert len(rows) == 1
    message_kind, payload = rows[0]
    assert message_kind == "email"
    assert payload["template"] == "verify_email"
    assert payload["to"] == email.lower()
    assert payload["name"] == "Ada Lovelace"
    assert payload["expires_at_text"]
    prefix = settings.public_base_url + f"/{kind}/verify?token="
    assert payload["verify_url"].startswith(prefix)
    assert len(payload["verify_url"]) > len(prefix)
    assert PASSWORD not in str(payload)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_sign_up_queues_no_email(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    body = seller_body if kind == "seller" else partner_body

    invalid = await client.post(f"/{kind}/signup", json=body(password="short"))
    assert_problem(invalid, 422, "validation_failed")
    unknown_field = await client.post(f"/{kind}/signup", json=body(email_verified_at=None))
    assert_problem(unknown_field, 422, "validation_failed")
    assert await outbox_rows(db_engine) == []

    account = await sign_up(client, kind)
    assert len(await outbox_rows(db_engine)) == 1
    taken = await client.post(f"/{kind}/signup", json=body(email=account["email"].upper()))
    assert_problem(taken, 409, "email_taken")
    assert len(await outbox_rows(db_engine)) == 1


@pytest.mark.parametrize("base_url", ["https://api.example", "https://api.example/"])
@pytest.mark.parametrize("kind", KINDS)
async def test_emails_use_the_public_base_url_and_render_the_link_in_both_parts(
    database_url: str, redis_url: str, db_engine: AsyncEngine, kind: str, base_url: str
) -> None:
    """End to end: sign-up and forgot, sent through a hostile Host header, queue emails whose
    links use the configured public address; rendered, both parts carry them; they work."""
    settings = make_settings(
        database_url,
        redis_url,
        public_base_url=base_url,
        email_verification_ttl_seconds=600,
        password_reset_ttl_seconds=120,
    )
    spoofed = {
        "Host": "evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "http",
    }
    body = seller_body() if kind == "seller" else partner_body()
    async with running_client(create_app(settings)) as http:
        signed_up = await http.post(f"/{kind}/signup", json=body, headers=spoofed)
        assert signed_up.status_code == 201, signed_up.text
        accepted = await http.post(
            f"/{kind}/password/forgot", json={"email": body["email"]}, headers=spoofed
        )
        assert accepted.status_code == 202

        [verification] = await queued_emails(db_engine, "verify_email", body["email"])
        [reset_email] = await queued_emails(db_engine, "password_reset", body["email"])
        for payload in (verification, reset_email):
            assert "evil.example" not in str(payload)
            assert "testserver" not in str(payload)
        verify_url = verification["verify_url"]
        assert verify_url.startswith(f"https://api.example/{kind}/verify?token=")
        assert reset_email["reset_url"] == f"https://api.example/{kind}/password/reset"
        assert reset_email["reference_url"].startswith("https://api.example/")

        # The lifetimes come from the settings.
        verify_claims = jwt.decode(token_of(verify_url), options={"verify_signature": False})
        assert verify_claims["exp"] - verify_claims["iat"] == 600
        reset_token = reset_email["reset_token"]
        reset_claims = jwt.decode(reset_token, options={"verify_signature": False})
        assert reset_claims["exp"] - reset_claims["iat"] == 120

        verification_text, verification_html = parts_of(render(settings, verification))
        assert verify_url in verification_text
        assert verify_url in verification_html
        assert f'href="{verify_url}"' in verification_html
        reset_text, reset_html = parts_of(render(settings, reset_email))
        assert reset_token in reset_text
        assert reset_token in reset_html
        assert reset_email["reset_url"] in reset_text

        verified = await http.get(link_path(verify_url))
        assert_json_verification(verified, body["email"])
        assert (await reset(http, kind, reset_token)).status_code == 204
        assert (await login_response(http, kind, body["email"], NEW_PASSWORD)).status_code == 200


# Verifying the address


@pytest.mark.parametrize("kind", KINDS)
async def test_the_verify_link_confirms_the_address_as_json(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    account = await sign_up(client, kind)
    token = await log_in(client, kind, account["email"])
    before = await client.get(f"/{kind}/me", headers=bearer(token))
    assert before.json()["email_verified_at"] is None

    url = await verify_url_for(db_engine, kind, account["email"])
    verified_at = assert_json_verification(await client.get(link_path(url)), account["email"])

    me = await client.get(f"/{kind}/me", headers=bearer(token))
    assert me.status_code == 200
    assert datetime.fromisoformat(me.json()["email_verified_at"]) == verified_at
    stored = await stored_account(db_engine, kind, account["id"])
    assert stored["email_verified_at"] == verified_at


@pytest.mark.parametrize("kind", KINDS)
async def test_the_verify_link_shows_browsers_a_confirmation_page(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    account = await sign_up(client, kind)
    url = await verify_url_for(db_engine, kind, account["email"])

    page = await client.get(link_path(url), headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Email address confirmed" in page.text
    assert account["email"] in page.text

    token = await log_in(client, kind, account["email"])
    me = await client.get(f"/{kind}/me", headers=bearer(token))
    assert me.json()["email_verified_at"] is not None


@pytest.mark.parametrize("kind", KINDS)
async def test_verifying_twice_keeps_the_first_timestamp(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    account = await sign_up(client, kind)
    path = link_path(await verify_url_for(db_engine, kind, account["email"]))

    first = assert_json_verification(await client.get(path), account["email"])
    second = assert_json_verification(await client.get(path), account["email"])
    assert second == first
    page = await client.get(path, headers={"Accept": BROWSER_ACCEPT})
    assert page.status_code == 200
    assert "Email address confirmed" in page.text
    stored = await stored_account(db_engine, kind, account["id"])
    assert stored["email_verified_at"] == first


def bad_verify_token(case: str, settings: Settings, verify_token: str, other: str) -> str:
    if case == "garbage":
        return "not-a-token"
    if case == "wrong_key":
        return resigned(settings, verify_token, key="another key of at least 32 bytes long!")
    if case == "other_email":
        return resigned(settings, verify_token, email="someone-else@example.com")
    return other  # an access token or a reset token of the same account


@pytest.mark.parametrize("case", ["garbage", "wrong_key", "other_email", "access", "reset"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_bad_verify_token_is_refused_to_api_clients_and_browsers(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, kind: str, case: str
) -> None:
    account = await sign_up(client, kind)
    verify_token = token_of(await verify_url_for(db_engine, kind, account["email"]))
    other = ""
    if case == "access":
        other = await log_in(client, kind, account["email"])
    elif case == "reset":
        other = await reset_token_for(client, db_engine, kind, account["email"])
    token = bad_verify_token(case, settings, verify_token, other)

    assert_link_refused(await client.get(f"/{kind}/verify", params={"token": token}))
    page = await client.get(
        f"/{kind}/verify", params={"token": token}, headers={"Accept": BROWSER_ACCEPT}
    )
    assert_link_page_refused(page)
    assert (await stored_account(db_engine, kind, account["id"]))["email_verified_at"] is None


@pytest.mark.parametrize("kind", KINDS)
async def test_an_expired_verify_link_is_refused_but_the_same_link_renewed_works(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, kind: str
) -> None:
    account = await sign_up(client, kind)
    token = token_of(await verify_url_for(db_engine, kind, account["email"]))

    stale = expired(settings, token)
    assert_link_refused(await client.get(f"/{kind}/verify", params={"token": stale}))
    page = await client.get(
        f"/{kind}/verify", params={"token": stale}, headers={"Accept": BROWSER_ACCEPT}
    )
    assert_link_page_refused(page)
    assert (await stored_account(db_engine, kind, account["id"]))["email_verified_at"] is None

    fresh = renewed(settings, token)
    verified = await client.get(f"/{kind}/verify", params={"token": fresh})
    assert_json_verification(verified, account["email"])


@pytest.mark.parametrize("kind", KINDS)
async def test_a_verify_token_of_the_other_kind_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    account, twin = await twin_accounts(client, db_engine, kind)
    other_kind = OTHER_KIND[kind]
    token = token_of(await verify_url_for(db_engine, kind, account["email"]))

    assert_link_refused(await client.get(f"/{other_kind}/verify", params={"token": token}))
    page = await client.get(
        f"/{other_kind}/verify", params={"token": token}, headers={"Accept": BROWSER_ACCEPT}
    )
    assert_link_page_refused(page)
    assert (await stored_account(db_engine, other_kind, twin["id"]))["email_verified_at"] is None

    # The same token does its job where it belongs, and only there.
    verified = await client.get(f"/{kind}/verify", params={"token": token})
    assert_json_verification(verified, account["email"])
    assert (await stored_account(db_engine, other_kind, twin["id"]))["email_verified_at"] is None


@pytest.mark.parametrize("purpose", ["verify", "reset"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_link_token_is_not_an_access_token(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str, purpose: str
) -> None:
    account = await sign_up(client, kind)
    if purpose == "verify":
        token = token_of(await verify_url_for(db_engine, kind, account["email"]))
    else:
        token = await reset_token_for(client, db_engine, kind, account["email"])

    assert_invalid_token(await client.get(f"/{kind}/me", headers=bearer(token)))
    assert_invalid_token(await client.post(f"/{kind}/logout", headers=bearer(token)))


@pytest.mark.parametrize("kind", KINDS)
async def test_the_verify_link_without_a_token_is_422(client: httpx.AsyncClient, kind: str) -> None:
    assert_problem(await client.get(f"/{kind}/verify"), 422, "validation_failed")
    assert_problem(await client.get(f"/{kind}/verify?token="), 422, "validation_failed")


# Forgotten password


@pytest.mark.parametrize("kind", KINDS)
async def test_forgot_answers_the_same_202_whatever_the_email_and_mails_only_the_account(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, kind: str
) -> None:
    account = await sign_up(client, kind, name="Ada Lovelace")
    other_kinds_account = await sign_up(client, OTHER_KIND[kind])

    known = await forgot(client, kind, account["email"])
    unknown = await forgot(client, kind, f"nobody-{uuid.uuid4().hex[:8]}@example.com")
    other_kind = await forgot(client, kind, other_kinds_account["email"])

    for response in (known, unknown, other_kind):
        assert response.status_code == 202
        assert response.content == b""
        assert without_per_request_headers(response) == without_per_request_headers(known)
        assert response.headers["x-request-id"]
    assert len({r.headers["x-request-id"] for r in (known, unknown, other_kind)}) == 3

    [message] = await queued_emails(db_engine, "password_reset")
    assert message["to"] == account["email"]
    assert message["name"] == "Ada Lovelace"
    assert message["reset_token"]
    assert message["expires_at_text"]
    assert message["reset_url"] == settings.public_base_url + f"/{kind}/password/reset"


@pytest.mark.parametrize("kind", KINDS)
async def test_forgot_finds_the_account_whatever_the_letter_case(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    account = await sign_up(client, kind)
    response = await forgot(client, kind, account["email"].upper())
    assert response.status_code == 202
    [message] = await queued_emails(db_engine, "password_reset")
    assert message["to"] == account["email"]
    assert (await reset(client, kind, message["reset_token"])).status_code == 204


@pytest.mark.parametrize("kind", KINDS)
async def test_forgot_beyond_the_per_ip_limit_gets_429_and_sends_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, kind: str
) -> None:
    account = await sign_up(client, kind)
    for attempt in range(settings.token_attempts_per_ip):
        response = await forgot(client, kind, f"stranger-{attempt}@example.com")
        assert response.status_code == 202, f"attempt {attempt + 1}: {response.text}"

    blocked = await forgot(client, kind, account["email"])
    assert_problem(blocked, 429, "rate_limited")
    assert int(blocked.headers["retry-after"]) > 0
    assert await queued_emails(db_engine, "password_reset") == []
    # Reset requests have their own budget: logging in is not blocked by them.
    assert (await login_response(client, kind, account["email"], PASSWORD)).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
async def test_reset_emails_for_one_account_are_capped_without_saying_so(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, kind: str
) -> None:
    account = await sign_up(client, kind)
    responses = [
        await forgot(client, kind, account["email"])
        for _ in range(settings.reset_emails_per_account_per_day + 2)
    ]
    assert {response.status_code for response in responses} == {202}
    assert {response.content for response in responses} == {b""}
    sent = await queued_emails(db_engine, "password_reset", account["email"])
    assert len(sent) == settings.reset_emails_per_account_per_day


@pytest.mark.parametrize(
    "body",
    [{}, {"email": "not-an-email"}, {"email": "ada@example.com", "role": "admin"}],
    ids=["missing", "malformed", "unknown_field"],
)
@pytest.mark.parametrize("kind", KINDS)
async def test_forgot_with_a_bad_body_is_422(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str, body: dict[str, Any]
) -> None:
    await sign_up(client, kind, email="ada@example.com")
    response = await client.post(f"/{kind}/password/forgot", json=body)
    assert_problem(response, 422, "validation_failed")
    assert await queued_emails(db_engine, "password_reset") == []


# Resetting the password


@pytest.mark.parametrize("kind", KINDS)
async def test_reset_sets_the_new_password_and_retires_every_earlier_access_token(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    account = await sign_up(client, kind)
    email = account["email"]
    earlier = [await log_in(client, kind, email) for _ in range(2)]
    token = await reset_token_for(client, db_engine, kind, email)

    response = await reset(client, kind, token)
    assert response.status_code == 204
    assert response.content == b""

    assert_problem(await login_response(client, kind, email, PASSWORD), 401, "invalid_credentials")
    for access_token in earlier:
        assert_invalid_token(await client.get(f"/{kind}/me", headers=bearer(access_token)))
        # Routes that check only the caller's identity (not its entity) refuse it too.
        assert_invalid_token(await client.get("/shipments", headers=bearer(access_token)))
        assert_invalid_token(await client.post(f"/{kind}/logout", headers=bearer(access_token)))

    new_login = await login_response(client, kind, email, NEW_PASSWORD)
    assert new_login.status_code == 200
    fresh = new_login.json()["access_token"]
    me = await client.get(f"/{kind}/me", headers=bearer(fresh))
    assert me.status_code == 200
    assert me.json()["id"] == account["id"]
    assert (await client.post(f"/{kind}/logout", headers=bearer(fresh))).status_code == 204


@pytest.mark.parametrize("kind", KINDS)
async def test_a_reset_token_works_once(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    account = await sign_up(client, kind)
    token = await reset_token_for(client, db_engine, kind, account["email"])

    assert (await reset(client, kind, token)).status_code == 204
    assert_link_refused(await reset(client, kind, token, "yet another passphrase"))

    email = account["email"]
    assert (await login_response(client, kind, email, NEW_PASSWORD)).status_code == 200
    again = await login_response(client, kind, email, "yet another passphrase")
    assert_problem(again, 401, "invalid_credentials")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_reset_retires_the_accounts_other_reset_tokens(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    account = await sign_up(client, kind)
    first = await reset_token_for(client, db_engine, kind, account["email"])
    second = await reset_token_for(client, db_engine, kind, account["email"])

    assert (await reset(client, kind, second)).status_code == 204
    assert_link_refused(await reset(client, kind, first, "yet another passphrase"))
    assert (await login_response(client, kind, account["email"], NEW_PASSWORD)).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
async def test_simultaneous_resets_with_one_token_succeed_once(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    account = await sign_up(client, kind)
    token = await reset_token_for(client, db_engine, kind, account["email"])
    passwords = [f"new passphrase number {n}" for n in range(8)]

    responses = await asyncio.gather(*(reset(client, kind, token, p) for p in passwords))
    assert sorted(r.status_code for r in responses) == [204] + [400] * (len(passwords) - 1)
    [winner] = [p for p, r in zip(passwords, responses, strict=True) if r.status_code == 204]
    for loser in (r for r in responses if r.status_code != 204):
        assert_link_refused(loser)
    logins = {p: await login_response(client, kind, account["email"], p) for p in passwords}
    assert {p for p, r in logins.items() if r.status_code == 200} == {winner}
    stored = await stored_account(db_engine, kind, account["id"])
    assert stored["token_version"] == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_an_expired_reset_token_is_refused_but_the_same_token_renewed_works(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, kind: str
) -> None:
    account = await sign_up(client, kind)
    token = await reset_token_for(client, db_engine, kind, account["email"])
    before = await stored_account(db_engine, kind, account["id"])

    assert_link_refused(await reset(client, kind, expired(settings, token)))
    assert await stored_account(db_engine, kind, account["id"]) == before
    assert (await login_response(client, kind, account["email"], PASSWORD)).status_code == 200

    assert (await reset(client, kind, renewed(settings, token))).status_code == 204


@pytest.mark.parametrize("kind", KINDS)
async def test_a_reset_token_of_the_other_kind_is_refused(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str
) -> None:
    account, twin = await twin_accounts(client, db_engine, kind)
    other_kind = OTHER_KIND[kind]
    token = await reset_token_for(client, db_engine, kind, account["email"])
    twin_before = await stored_account(db_engine, other_kind, twin["id"])

    assert_link_refused(await reset(client, other_kind, token))
    assert await stored_account(db_engine, other_kind, twin["id"]) == twin_before
    twin_login = await login_response(client, other_kind, twin["email"], PASSWORD)
    assert twin_login.status_code == 200

    # The token still works where it belongs, and changes only that account.
    assert (await reset(client, kind, token)).status_code == 204
    assert await stored_account(db_engine, other_kind, twin["id"]) == twin_before


@pytest.mark.parametrize("case", ["garbage", "access", "verify", "wrong_key"])
@pytest.mark.parametrize("kind", KINDS)
async def test_other_tokens_do_not_reset_a_password(
    client: httpx.AsyncClient, db_engine: AsyncEngine, settings: Settings, kind: str, case: str
) -> None:
    account = await sign_up(client, kind)
    if case == "garbage":
        token = "not-a-token"
    elif case == "access":
        token = await log_in(client, kind, account["email"])
    elif case == "verify":
        token = token_of(await verify_url_for(db_engine, kind, account["email"]))
    else:
        genuine = await reset_token_for(client, db_engine, kind, account["email"])
        token = resigned(settings, genuine, key="another key of at least 32 bytes long!")
    before = await stored_account(db_engine, kind, account["id"])

    assert_link_refused(await reset(client, kind, token))
    assert await stored_account(db_engine, kind, account["id"]) == before
    assert (await login_response(client, kind, account["email"], PASSWORD)).status_code == 200


@pytest.mark.parametrize(
    "new_password",
    ["seven77", "x" * 73, "é" * 36 + "x"],
    ids=["7_bytes", "73_ascii_bytes", "73_utf8_bytes_in_37_characters"],
)
@pytest.mark.parametrize("kind", KINDS)
async def test_an_invalid_new_password_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str, new_password: str
) -> None:
    account = await sign_up(client, kind)
    access_token = await log_in(client, kind, account["email"])
    token = await reset_token_for(client, db_engine, kind, account["email"])
    before = await stored_account(db_engine, kind, account["id"])

    response = await reset(client, kind, token, new_password)
    problem = assert_problem(response, 422, "validation_failed")
    assert any("new_password" in issue["loc"] for issue in problem["errors"])

    assert await stored_account(db_engine, kind, account["id"]) == before
    assert (await client.get(f"/{kind}/me", headers=bearer(access_token))).status_code == 200
    assert (await login_response(client, kind, account["email"], PASSWORD)).status_code == 200
    # The token was not used up: it still sets a valid password of exactly 72 bytes.
    longest = "é" * 36
    assert (await reset(client, kind, token, longest)).status_code == 204
    assert (await login_response(client, kind, account["email"], longest)).status_code == 200


@pytest.mark.parametrize(
    "extra",
    [{"email": "ada@example.com"}, {"token_version": 0}],
    ids=["email", "token_version"],
)
@pytest.mark.parametrize("kind", KINDS)
async def test_reset_with_unknown_fields_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db_engine: AsyncEngine, kind: str, extra: dict[str, Any]
) -> None:
    account = await sign_up(client, kind)
    token = await reset_token_for(client, db_engine, kind, account["email"])
    before = await stored_account(db_engine, kind, account["id"])

    body = {"token": token, "new_password": NEW_PASSWORD, **extra}
    response = await client.post(f"/{kind}/password/reset", json=body)
    assert_problem(response, 422, "validation_failed")
    for incomplete in ({"new_password": NEW_PASSWORD}, {"token": token}, {"token": ""}):
        missing = await client.post(f"/{kind}/password/reset", json=incomplete)
        assert_problem(missing, 422, "validation_failed")

    assert await stored_account(db_engine, kind, account["id"]) == before
    assert (await login_response(client, kind, account["email"], PASSWORD)).status_code == 200
    assert (await reset(client, kind, token)).status_code == 204
