"""Partner approval (product.md §4): pending partners get nothing until the operator approves
them with `shiptrack partners ...`; suspended ones lose access to shipments; partners see a
recipient's contact fields only until PARTNER_PII_DAYS after the shipment ends.

These tests run the app with PARTNER_APPROVAL=manual, the production default, and call the CLI's
`main()` in-process against the test database, as an operator would from a shell.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from backend.cli import main
from backend.config import Settings
from backend.main import create_app
from tests.assertions import assert_problem
from tests.conftest import count_rows, running_client
from tests.factories import account_with_token
from tests.outbox.conftest import SmtpServer, WorkerFactory, drain
from tests.shipments.factories import create_shipment, shipment_body

ZIP = "02139"
RECIPIENT = {"name": "Grace Hopper", "email": "grace@example.com", "phone": "+1 617 555 0100"}
DESTINATION = {"zip_code": ZIP, "address_line": "77 Massachusetts Ave", "city": "Cambridge"}


@pytest.fixture
def operator(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> Operator:
    """Runs `shiptrack ...` in-process against the test's database, as from a shell."""
    assert settings.database_url is not None
    assert settings.redis_url is not None
    monkeypatch.setenv("ENVIRONMENT", "test")
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    return Operator(capsys)


class Operator:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    async def run(self, *argv: str) -> str:
        """The command's output; raises SystemExit when the command fails."""
        self._capsys.readouterr()
        # main() runs its own event loop (asyncio.run), so it cannot run on this one.
        await asyncio.to_thread(main, list(argv))
        return self._capsys.readouterr().out

    async def fails(self, *argv: str) -> tuple[int, str]:
        """The exit status and error output of a command that must fail."""
        self._capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            await asyncio.to_thread(main, list(argv))
        code = exit_info.value.code
        assert isinstance(code, int)
        return code, self._capsys.readouterr().err


async def new_partner(
    client: httpx.AsyncClient, **overrides: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {
        "name": "Speedy Couriers",
        "serviceable_zip_codes": [ZIP],
        "max_handling_capacity": 10,
        **overrides,
    }
    return await account_with_token(client, "partner", **values)


async def try_create(client: httpx.AsyncClient, seller_headers: dict[str, str]) -> httpx.Response:
    body = shipment_body(destination=DESTINATION, recipient=RECIPIENT)
    return await client.post("/shipments", json=body, headers=seller_headers)


async def partner_status(engine: AsyncEngine, partner_id: str) -> dict[str, Any]:
    query = text(
        "SELECT status, name, approved_at, suspended_reason, active_shipments"
        " FROM partners WHERE id = :id"
    )
    async with engine.connect() as connection:
        row = (await connection.execute(query, {"id": partner_id})).mappings().one()
    return dict(row)


async def approved_partner_with_shipment(
    client: httpx.AsyncClient, operator: Operator
) -> tuple[dict[str, Any], dict[str, str], dict[str, str], dict[str, Any]]:
    """(partner, partner headers, seller headers, a placed shipment assigned to the partner)."""
    partner, partner_headers = await new_partner(client)
    await operator.run("partners", "approve", partner["email"])
    _, seller_headers = await account_with_token(client, "seller")
    shipment = await create_shipment(
        client, seller_headers, destination=DESTINATION, recipient=RECIPIENT
    )
    assert shipment["partner"]["id"] == partner["id"]
    return partner, partner_headers, seller_headers, shipment


# --- pending ----------------------------------------------------------------------------------


async def test_a_new_partner_is_pending_and_gets_no_shipments(
    manual_client: httpx.AsyncClient, db_engine: AsyncEngine
) -> None:
    partner, partner_headers = await new_partner(manual_client)
    assert partner["status"] == "pending"
    me = await manual_client.get("/partner/me", headers=partner_headers)
    assert (me.json()["status"], me.json()["suspended_reason"]) == ("pending", None)

    # The only partner for this zip is pending: nobody can take the shipment.
    _, seller_headers = await account_with_token(manual_client, "seller")
    response = await try_create(manual_client, seller_headers)
    assert_problem(response, 409, "no_partner_available")
    assert await count_rows(db_engine, "shipments") == 0
    assert (await partner_status(db_engine, partner["id"]))["active_shipments"] == 0

    listed = await manual_client.get("/shipments", headers=partner_headers)
    assert listed.status_code == 200
    assert listed.json() == {"items": [], "next_cursor": None}


async def test_a_pending_partner_is_passed_over_for_an_approved_one_with_more_load(
    manual_client: httpx.AsyncClient, operator: Operator
) -> None:
    busy, _ = await new_partner(manual_client, name="Busy")
    await operator.run("partners", "approve", busy["email"])
    _, seller_headers = await account_with_token(manual_client, "seller")
    assert (await try_create(manual_client, seller_headers)).status_code == 201
    await new_partner(manual_client, name="Idle but pending")

    # Least loaded first would pick the idle partner, were it approved.
    response = await try_create(manual_client, seller_headers)
    assert response.status_code == 201
    assert response.json()["partner"]["id"] == busy["id"]


async def test_the_queries_show_a_partner_nothing_unless_it_is_approved(
    client: httpx.AsyncClient, db_engine: AsyncEngine, operator: Operator
) -> None:
    # A partner that is not approved holds a shipment (its status changed after the token was
    # checked): the reads and the update find nothing rather than trusting the earlier check.
    partner, partner_headers, _, shipment = await approved_partner_with_shipment(client, operator)
    async with db_engine.begin() as connection:
        await connection.execute(
            text("UPDATE partners SET status = 'pending' WHERE id = :id"), {"id": partner["id"]}
        )
    one = await client.get(f"/shipments/{shipment['id']}", headers=partner_headers)
    assert_problem(one, 404, "shipment_not_found")
    listed = await client.get("/shipments", headers=partner_headers)
    assert listed.json()["items"] == []
    update = await client.patch(
        f"/shipments/{shipment['id']}", json={"status": "in_transit"}, headers=partner_headers
    )
    assert_problem(update, 404, "shipment_not_found")


# --- approving --------------------------------------------------------------------------------


async def test_approving_from_the_cli_lets_the_partner_work_and_emails_it(
    manual_client: httpx.AsyncClient,
    db_engine: AsyncEngine,
    operator: Operator,
    make_worker: WorkerFactory,
    smtp_server: SmtpServer,
) -> None:
    partner, partner_headers = await new_partner(
        manual_client, serviceable_zip_codes=[ZIP, "02140"]
    )

    output = await operator.run("partners", "approve", partner["email"].upper())

    assert f"Approved Speedy Couriers <{partner['email']}>" in output
    stored = await partner_status(db_engine, partner["id"])
    assert stored["status"] == "approved"
    assert stored["approved_at"] is not None
    me = await manual_client.get("/partner/me", headers=partner_headers)
    assert me.json()["status"] == "approved"
    _, seller_headers = await account_with_token(manual_client, "seller")
    created = await try_create(manual_client, seller_headers)
    assert created.status_code == 201
    assert created.json()["partner"] == {"id": partner["id"], "name": "Speedy Couriers"}
    listed = await manual_client.get("/shipments", headers=partner_headers)
    assert [item["id"] for item in listed.json()["items"]] == [created.json()["id"]]

    await drain(make_worker())
    mails = [m for m in smtp_server.received_by(partner["email"]) if "approved" in m.subject]
    assert len(mails) == 1
    assert mails[0].subject == "Your Shiptrack partner account is approved"
    assert "02139, 02140" in mails[0].part("plain")
    assert "up to 10 active shipments" in mails[0].part("plain")
    assert "Speedy Couriers" in mails[0].part("html")


async def test_approving_twice_changes_nothing_and_sends_one_email(
    manual_client: httpx.AsyncClient, db_engine: AsyncEngine, operator: Operator
) -> None:
    partner, _ = await new_partner(manual_client)
    await operator.run("partners", "approve", partner["email"])
    first = await partner_status(db_engine, partner["id"])

    output = await operator.run("partners", "approve", partner["email"])

    assert "was already approved; nothing changed" in output
    assert await partner_status(db_engine, partner["id"]) == first
    async with db_engine.connect() as connection:
        approvals = await connection.scalar(
            text(
                "SELECT count(*) FROM outbox_messages"
                " WHERE payload ->> 'template' = 'partner_approved'"
            )
        )
    assert approvals == 1


async def test_the_cli_refuses_an_unknown_email_with_a_message_and_a_failure_status(
    manual_client: httpx.AsyncClient, db_engine: AsyncEngine, operator: Operator
) -> None:
    partner, _ = await new_partner(manual_client)
    before = await partner_status(db_engine, partner["id"])
    unknown = f"nobody-{uuid.uuid4().hex[:6]}@example.com"
    for argv in (
        ("partners", "approve", unknown),
        ("partners", "suspend", unknown, "--reason", "fraud"),
        ("partners", "rename", unknown, "Someone"),
    ):
        code, error = await operator.fails(*argv)
        assert code == 1
        assert f"No partner account has the email address '{unknown}'" in error
    assert await partner_status(db_engine, partner["id"]) == before


async def test_the_cli_lists_partners_by_status(
    manual_client: httpx.AsyncClient, operator: Operator
) -> None:
    waiting, _ = await new_partner(manual_client, name="Waiting Couriers")
    working, _ = await new_partner(manual_client, name="Working Couriers")
    await operator.run("partners", "approve", working["email"])

    pending = await operator.run("partners", "list", "--status", "pending")
    everyone = await operator.run("partners", "list")

    assert waiting["email"] in pending
    assert working["email"] not in pending
    assert waiting["email"] in everyone
    assert working["email"] in everyone
    code, error = await operator.fails("partners", "list", "--status", "banned")
    assert code == 2
    assert "invalid choice" in error


# --- suspending -------------------------------------------------------------------------------


async def test_a_suspended_partner_gets_403_on_every_shipment_route_and_keeps_its_shipments(
    client: httpx.AsyncClient, db_engine: AsyncEngine, operator: Operator
) -> None:
    partner, partner_headers, seller_headers, shipment = await approved_partner_with_shipment(
        client, operator
    )

    output = await operator.run(
        "partners", "suspend", partner["email"], "--reason", "Posted payment links in notes"
    )

    assert "Its 1 active shipment(s) stay assigned to it" in output
    path = f"/shipments/{shipment['id']}"
    refused = [
        await client.get(path, headers=partner_headers),
        await client.get("/shipments", headers=partner_headers),
        await client.get(f"{path}/stream", headers=partner_headers),
        await client.patch(path, json={"status": "in_transit"}, headers=partner_headers),
    ]
    for response in refused:
        assert_problem(response, 403, "partner_suspended")
    # The shipment stays assigned, unchanged; its seller still sees who holds it.
    for_seller = await client.get(path, headers=seller_headers)
    assert for_seller.json()["partner"]["id"] == partner["id"]
    assert (for_seller.json()["status"], for_seller.json()["version"]) == ("placed", 1)
    stored = await partner_status(db_engine, partner["id"])
    assert (stored["status"], stored["active_shipments"]) == ("suspended", 1)
    # It gets no new shipments, and can read why.
    assert_problem(await try_create(client, seller_headers), 409, "no_partner_available")
    me = await client.get("/partner/me", headers=partner_headers)
    assert me.status_code == 200
    assert me.json()["status"] == "suspended"
    assert me.json()["suspended_reason"] == "Posted payment links in notes"


async def test_approving_a_suspended_partner_restores_its_access(
    client: httpx.AsyncClient, db_engine: AsyncEngine, operator: Operator
) -> None:
    partner, partner_headers, _, shipment = await approved_partner_with_shipment(client, operator)
    await operator.run("partners", "suspend", partner["email"], "--reason", "Checking documents")

    await operator.run("partners", "approve", partner["email"])

    response = await client.get(f"/shipments/{shipment['id']}", headers=partner_headers)
    assert response.status_code == 200
    stored = await partner_status(db_engine, partner["id"])
    assert (stored["status"], stored["suspended_reason"]) == ("approved", None)


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501, "nul\x00byte"])
async def test_a_suspension_needs_a_storable_reason(
    client: httpx.AsyncClient, db_engine: AsyncEngine, operator: Operator, reason: str
) -> None:
    partner, _ = await new_partner(client)
    before = await partner_status(db_engine, partner["id"])
    code, error = await operator.fails("partners", "suspend", partner["email"], "--reason", reason)
    assert code == 2
    assert "argument --reason" in error
    assert await partner_status(db_engine, partner["id"]) == before


# --- renaming ---------------------------------------------------------------------------------


async def test_the_operator_renames_a_partner_and_recipients_see_the_new_name(
    client: httpx.AsyncClient, db_engine: AsyncEngine, operator: Operator
) -> None:
    partner, partner_headers, _, shipment = await approved_partner_with_shipment(client, operator)
    refused = await client.patch(
        "/partner/me", json={"name": "Royal Mail"}, headers=partner_headers
    )
    assert_problem(refused, 409, "partner_name_locked")

    output = await operator.run("partners", "rename", partner["email"], "  Speedy Couriers Ltd ")

    assert "Renamed" in output
    assert (await partner_status(db_engine, partner["id"]))["name"] == "Speedy Couriers Ltd"
    tracking = await client.get(f"/track/{shipment['tracking_number']}")
    assert tracking.json()["partner"] == {"name": "Speedy Couriers Ltd"}
    code, _ = await operator.fails("partners", "rename", partner["email"], "x" * 101)
    assert code == 2
    assert (await partner_status(db_engine, partner["id"]))["name"] == "Speedy Couriers Ltd"


# --- recipients' contact fields ---------------------------------------------------------------


async def end_days_ago(engine: AsyncEngine, shipment_id: str, days: float) -> None:
    """Move the shipment's terminal event (its last) `days` into the past."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE shipment_events e SET created_at = now() - make_interval(secs => :secs)"
                " FROM shipments s WHERE s.id = e.shipment_id AND s.id = :id"
                " AND e.sequence = s.last_sequence"
            ),
            {"id": shipment_id, "secs": days * 86400},
        )


def contact_fields(shipment: dict[str, Any]) -> dict[str, Any]:
    return {
        "recipient": shipment["recipient"],
        "address_line": shipment["destination"]["address_line"],
        "recipient_redacted": shipment["recipient_redacted"],
    }


VISIBLE = {
    "recipient": RECIPIENT,
    "address_line": DESTINATION["address_line"],
    "recipient_redacted": False,
}
REDACTED = {
    "recipient": {"name": None, "email": None, "phone": None},
    "address_line": None,
    "recipient_redacted": True,
}


async def test_a_partner_loses_the_recipients_contact_fields_days_after_the_end(
    client: httpx.AsyncClient, db_engine: AsyncEngine, operator: Operator
) -> None:
    _, partner_headers, seller_headers, shipment = await approved_partner_with_shipment(
        client, operator
    )
    path = f"/shipments/{shipment['id']}"
    cancelled = await client.post(f"{path}/cancel", headers=seller_headers)
    assert cancelled.status_code == 200

    # Within PARTNER_PII_DAYS (7 by default) of the end, the partner still sees them.
    await end_days_ago(db_engine, shipment["id"], 6.9)
    assert contact_fields((await client.get(path, headers=partner_headers)).json()) == VISIBLE
    without_timeline = {"include": ""}  # the list dates the end without loading the timeline
    listed = await client.get("/shipments", headers=partner_headers, params=without_timeline)
    assert [contact_fields(item) for item in listed.json()["items"]] == [VISIBLE]

    await end_days_ago(db_engine, shipment["id"], 7.1)
    one = (await client.get(path, headers=partner_headers)).json()
    assert contact_fields(one) == REDACTED
    # What is not contact data stays: where it goes, what it is.
    assert (one["destination"]["zip_code"], one["destination"]["city"]) == (ZIP, "Cambridge")
    assert one["content"] == shipment["content"]
    listed = (await client.get("/shipments", headers=partner_headers)).json()["items"]
    assert [contact_fields(item) for item in listed] == [REDACTED]
    listed = await client.get("/shipments", headers=partner_headers, params=without_timeline)
    assert [contact_fields(item) for item in listed.json()["items"]] == [REDACTED]
    # The seller always sees its recipient.
    assert contact_fields((await client.get(path, headers=seller_headers)).json()) == VISIBLE


async def test_an_active_shipment_keeps_its_contact_fields_however_old(
    client: httpx.AsyncClient, db_engine: AsyncEngine, operator: Operator
) -> None:
    _, partner_headers, _, shipment = await approved_partner_with_shipment(client, operator)
    await end_days_ago(db_engine, shipment["id"], 30)  # its newest event, not an end

    response = await client.get(f"/shipments/{shipment['id']}", headers=partner_headers)

    assert contact_fields(response.json()) == VISIBLE


async def test_partner_pii_days_sets_the_retention(
    settings: Settings, db_engine: AsyncEngine, operator: Operator
) -> None:
    app: FastAPI = create_app(settings.model_copy(update={"partner_pii_days": 30}))
    async with running_client(app) as client:
        _, partner_headers, seller_headers, shipment = await approved_partner_with_shipment(
            client, operator
        )
        path = f"/shipments/{shipment['id']}"
        assert (await client.post(f"{path}/cancel", headers=seller_headers)).status_code == 200

        await end_days_ago(db_engine, shipment["id"], 8)
        assert contact_fields((await client.get(path, headers=partner_headers)).json()) == VISIBLE
        await end_days_ago(db_engine, shipment["id"], 31)
        assert contact_fields((await client.get(path, headers=partner_headers)).json()) == REDACTED
