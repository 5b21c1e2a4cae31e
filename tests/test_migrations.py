"""Alembic migrations on a scratch database: up, down, up again, and no drift from the models."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import backend.models  # noqa: F401 - registers every table on the metadata
from backend.cli import alembic_config, migrate
from backend.db import metadata
from tests.conftest import create_database, drop_database

# Every table the models declare, and nothing else, must come from the migrations.
APPLICATION_TABLES = set(metadata.tables)


@pytest.fixture
async def scratch_url(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    """An empty database of its own, dropped at the end of the test."""
    admin_url = server_urls[0]
    name = f"shiptrack_migrations_{uuid.uuid4().hex[:12]}"
    url = await create_database(admin_url, name)
    try:
        yield url
    finally:
        await drop_database(admin_url, name)


@pytest.fixture
async def scratch_engine(scratch_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(scratch_url)
    try:
        yield engine
    finally:
        await engine.dispose()


# Alembic's env.py runs its own event loop, so every command runs on a worker thread.
async def upgrade(url: str, revision: str = "head") -> None:
    if revision == "head":
        await asyncio.to_thread(migrate, url)
    else:
        await asyncio.to_thread(command.upgrade, alembic_config(url), revision)


async def downgrade(url: str, revision: str) -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)


def script_directory(url: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(url))


async def public_tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            )
        )
        return {str(row[0]) for row in rows}


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        rows = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert len(rows) <= 1
    return str(rows[0][0]) if rows else None


async def constraints(engine: AsyncEngine, table: str) -> dict[str, tuple[str, str]]:
    """name -> (kind letter from pg_constraint, definition) for one table."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT c.conname, c.contype::text, pg_get_constraintdef(c.oid) "
                "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
                "JOIN pg_namespace n ON n.oid = t.relnamespace "
                "WHERE n.nspname = 'public' AND t.relname = :table"
            ),
            {"table": table},
        )
        return {str(name): (str(kind), str(definition)) for name, kind, definition in rows}


async def indexes(engine: AsyncEngine, table: str) -> dict[str, str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = 'public' AND tablename = :table"
            ),
            {"table": table},
        )
        return {str(name): str(definition) for name, definition in rows}


def schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    differences: list[Any] = compare_metadata(context, metadata)
    return differences


async def differences_from_models(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        return await connection.run_sync(schema_differences)


async def test_upgrade_creates_tables_with_their_constraints(
    scratch_url: str, scratch_engine: AsyncEngine
) -> None:
    await upgrade(scratch_url)

    assert await public_tables(scratch_engine) == APPLICATION_TABLES | {"alembic_version"}
    assert (
        await current_revision(scratch_engine) == script_directory(scratch_url).get_current_head()
    )

    sellers = await constraints(scratch_engine, "sellers")
    assert {name: kind for name, (kind, _) in sellers.items()} == {
        "pk_sellers": "p",
        "uq_sellers_email": "u",
        "ck_sellers_email_lowercase": "c",
    }
    assert sellers["uq_sellers_email"][1] == "UNIQUE (email)"
    assert "lower" in sellers["ck_sellers_email_lowercase"][1]

    partners = await constraints(scratch_engine, "partners")
    assert {name: kind for name, (kind, _) in partners.items()} == {
        "pk_partners": "p",
        "uq_partners_email": "u",
        "ck_partners_email_lowercase": "c",
        "ck_partners_capacity_positive": "c",
        "ck_partners_active_not_negative": "c",
        "ck_partners_status_known": "c",
        "uq_partners_simulates_for_seller_id": "u",
        "fk_partners_simulates_for_seller_id_sellers": "f",
    }
    assert partners["uq_partners_email"][1] == "UNIQUE (email)"
    assert "suspended" in partners["ck_partners_status_known"][1]
    assert "max_handling_capacity >= 1" in partners["ck_partners_capacity_positive"][1]

    partner_indexes = await indexes(scratch_engine, "partners")
    assert (
        "USING gin (serviceable_zip_codes)" in partner_indexes["ix_partners_serviceable_zip_codes"]
    )

    shipments = await constraints(scratch_engine, "shipments")
    assert shipments["uq_shipments_tracking_number"] == ("u", "UNIQUE (tracking_number)")
    assert "weight_kg > " in shipments["ck_shipments_weight_range"][1]
    assert "placed" in shipments["ck_shipments_status_known"][1]
    events = await constraints(scratch_engine, "shipment_events")
    assert events["uq_shipment_events_sequence"] == ("u", "UNIQUE (shipment_id, sequence)")
    shipment_indexes = await indexes(scratch_engine, "shipments")
    assert {
        "ix_shipments_seller_mode_created",
        "ix_shipments_partner_created",
        "ix_shipments_seller_mode_status_created",
        "ix_shipments_partner_status_created",
    } <= set(shipment_indexes)
    tag_indexes = await indexes(scratch_engine, "shipment_tags")
    assert {
        "ix_shipment_tags_seller_mode_tag_created",
        "ix_shipment_tags_partner_tag_created",
    } <= set(tag_indexes)


async def test_migrated_constraints_refuse_bad_rows(
    scratch_url: str, scratch_engine: AsyncEngine
) -> None:
    await upgrade(scratch_url)
    insert_seller = text(
        "INSERT INTO sellers (id, name, email, password_hash, zip_code, created_at, updated_at) "
        "VALUES (:id, 'S', :email, 'h', '02139', now(), now())"
    )
    insert_partner = text(
        "INSERT INTO partners (id, name, email, password_hash, serviceable_zip_codes, "
        "max_handling_capacity, created_at, updated_at) "
        "VALUES (:id, 'P', :email, 'h', ARRAY['02139'], :capacity, now(), now())"
    )

    async with scratch_engine.begin() as connection:
        await connection.execute(insert_seller, {"id": uuid.uuid4(), "email": "a@example.com"})

    bad_rows: list[tuple[Any, dict[str, Any], str]] = [
        (insert_seller, {"id": uuid.uuid4(), "email": "a@example.com"}, "uq_sellers_email"),
        (
            insert_seller,
            {"id": uuid.uuid4(), "email": "Upper@Example.com"},
            "ck_sellers_email_lowercase",
        ),
        (
            insert_partner,
            {"id": uuid.uuid4(), "email": "p@example.com", "capacity": 0},
            "ck_partners_capacity_positive",
        ),
        (
            insert_partner,
            {"id": uuid.uuid4(), "email": "P@example.com", "capacity": 1},
            "ck_partners_email_lowercase",
        ),
    ]
    for statement, values, constraint in bad_rows:
        with pytest.raises(IntegrityError, match=constraint):
            async with scratch_engine.begin() as connection:
                await connection.execute(statement, values)

    async with scratch_engine.begin() as connection:
        values = {"id": uuid.uuid4(), "email": "p@example.com", "capacity": 1}
        await connection.execute(insert_partner, values)
        duplicate = {"id": uuid.uuid4(), "email": "p@example.com", "capacity": 2}
        with pytest.raises(IntegrityError, match="uq_partners_email"):
            async with connection.begin_nested():
                await connection.execute(insert_partner, duplicate)


PARTNER_APPROVAL_REVISION = "83aec365b78d"


async def test_partners_that_exist_before_approval_stay_approved_and_new_ones_start_pending(
    scratch_url: str, scratch_engine: AsyncEngine
) -> None:
    # Partners already carrying shipments must not lose their work when approval arrives.
    await upgrade(scratch_url, f"{PARTNER_APPROVAL_REVISION}-1")
    insert_partner = text(
        "INSERT INTO partners (id, name, email, password_hash, serviceable_zip_codes, "
        "max_handling_capacity, created_at, updated_at) "
        "VALUES (:id, 'P', :email, 'h', ARRAY['02139'], 3, now(), now())"
    )
    async with scratch_engine.begin() as connection:
        await connection.execute(insert_partner, {"id": uuid.uuid4(), "email": "old@example.com"})

    await upgrade(scratch_url)
    async with scratch_engine.begin() as connection:
        await connection.execute(insert_partner, {"id": uuid.uuid4(), "email": "new@example.com"})
        rows = await connection.execute(
            text("SELECT email, status, approved_at IS NOT NULL FROM partners ORDER BY email")
        )
        stored = [tuple(row) for row in rows]
    assert stored == [("new@example.com", "pending", False), ("old@example.com", "approved", True)]
    with pytest.raises(IntegrityError, match="ck_partners_status_known"):
        async with scratch_engine.begin() as connection:
            await connection.execute(text("UPDATE partners SET status = 'banned'"))


INDEXES_REVISION = "91ac0dfb25d5"


async def test_tag_links_that_exist_before_the_owner_indexes_get_their_shipments_owners(
    scratch_url: str, scratch_engine: AsyncEngine
) -> None:
    # A tag filter reads the links' copies of the shipment's owners: links stored before they
    # existed must be found too.
    await upgrade(scratch_url, f"{INDEXES_REVISION}-1")
    seller, partner, shipment = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with scratch_engine.begin() as connection:
        for statement in (
            "INSERT INTO sellers (id, name, email, password_hash, zip_code, created_at,"
            " updated_at) VALUES (:seller, 'S', 's@example.com', 'h', '02139', now(), now())",
            "INSERT INTO partners (id, name, email, password_hash, serviceable_zip_codes,"
            " max_handling_capacity, created_at, updated_at)"
            " VALUES (:partner, 'P', 'p@example.com', 'h', ARRAY['02139'], 3, now(), now())",
            "INSERT INTO shipments (id, tracking_number, seller_id, partner_id, status, content,"
            " weight_kg, destination_zip, recipient_name, recipient_email, estimated_delivery,"
            " version, last_sequence, delivery_code_attempts, created_at, updated_at)"
            " VALUES (:shipment, 'T1', :seller, :partner, 'placed', 'c', 1, '02139', 'R',"
            " 'r@example.com', now(), 1, 0, 0, '2026-01-02T03:04:05Z', now())",
            "INSERT INTO tags (name) VALUES ('gift')",
            "INSERT INTO shipment_tags (shipment_id, tag_id) SELECT :shipment, id FROM tags",
        ):
            values = {"seller": seller, "partner": partner, "shipment": shipment}
            await connection.execute(
                text(statement), {k: v for k, v in values.items() if f":{k}" in statement}
            )

    await upgrade(scratch_url)
    async with scratch_engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT seller_id, partner_id, created_at FROM shipment_tags")
        )
        stored = [tuple(row) for row in rows]
    assert len(stored) == 1
    assert stored[0][:2] == (seller, partner)
    assert stored[0][2].isoformat() == "2026-01-02T03:04:05+00:00"


async def test_downgrade_to_base_removes_everything_and_upgrade_works_again(
    scratch_url: str, scratch_engine: AsyncEngine
) -> None:
    await upgrade(scratch_url)
    await downgrade(scratch_url, "base")

    assert await public_tables(scratch_engine) == {"alembic_version"}
    assert await current_revision(scratch_engine) is None
    async with scratch_engine.connect() as connection:
        leftover_types = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = 'public' AND t.typtype = 'e'"
            )
        )
    assert leftover_types == 0

    await upgrade(scratch_url)
    assert await public_tables(scratch_engine) == APPLICATION_TABLES | {"alembic_version"}
    assert (
        await current_revision(scratch_engine) == script_directory(scratch_url).get_current_head()
    )
    assert await differences_from_models(scratch_engine) == []


async def test_every_revision_upgrades_and_downgrades_one_step_at_a_time(
    scratch_url: str, scratch_engine: AsyncEngine
) -> None:
    scripts = script_directory(scratch_url)
    assert len(scripts.get_heads()) == 1, "migrations must form a single line"
    # Oldest first.
    revisions = [script.revision for script in reversed(list(scripts.walk_revisions()))]
    assert revisions

    for revision in revisions:
        await upgrade(scratch_url, "+1")
        assert await current_revision(scratch_engine) == revision
    for expected in [*reversed(revisions[:-1]), None]:
        await downgrade(scratch_url, "-1")
        assert await current_revision(scratch_engine) == expected
    assert await public_tables(scratch_engine) == {"alembic_version"}


async def test_models_and_migrations_do_not_drift(
    scratch_url: str, scratch_engine: AsyncEngine
) -> None:
    assert set(metadata.tables) >= APPLICATION_TABLES
    # The comparison really compares: an empty database differs from the models.
    assert await differences_from_models(scratch_engine) != []

    await upgrade(scratch_url)
    assert await differences_from_models(scratch_engine) == []


async def test_offline_mode_prints_the_sql(scratch_url: str) -> None:
    # `alembic upgrade head --sql`: for deployments where a DBA applies the migration.
    config = alembic_config(scratch_url)
    buffer = io.StringIO()
    config.output_buffer = buffer
    await asyncio.to_thread(command.upgrade, config, "head", sql=True)
    sql = buffer.getvalue()
    for table in APPLICATION_TABLES:
        assert f"CREATE TABLE {table}" in sql
    assert "alembic_version" in sql


UNIQUE_WEBHOOK_URLS_REVISION = "fbf27d6b5d8f"


async def test_duplicate_webhook_urls_are_reduced_to_one_before_the_unique_index(
    scratch_url: str, scratch_engine: AsyncEngine
) -> None:
    # A live database may hold endpoints registered twice for one URL: the upgrade must not
    # fail on them. Of each seller's endpoints for a URL in a mode it keeps the enabled one,
    # then the one not failing, then the oldest.
    await upgrade(scratch_url, f"{UNIQUE_WEBHOOK_URLS_REVISION}-1")
    seller, other = uuid.uuid4(), uuid.uuid4()
    insert_endpoint = text(
        "INSERT INTO webhook_endpoints (id, seller_id, url, secret, enabled, failing_since,"
        " created_at, livemode) VALUES (:id, :seller, :url, 'whsec_x', :enabled,"
        " CASE WHEN :failing THEN now() END, now() - make_interval(days => :age), :livemode)"
    )
    url, other_url = "https://hooks.shop.example/a", "https://hooks.shop.example/b"
    # (name, seller, url, enabled, failing, age in days, livemode)
    endpoints = [
        ("disabled_oldest", seller, url, False, True, 9, True),
        ("failing", seller, url, True, True, 8, True),
        ("healthy", seller, url, True, False, 2, True),
        ("healthy_newer", seller, url, True, False, 1, True),
        ("test_mode", seller, url, True, True, 5, False),
        ("test_mode_newer", seller, url, True, True, 4, False),
        ("other_url", seller, other_url, False, True, 3, True),
        ("other_seller", other, url, True, True, 1, True),
    ]
    ids = {name: uuid.uuid4() for name, *_ in endpoints}
    async with scratch_engine.begin() as connection:
        for number, account in enumerate((seller, other)):
            await connection.execute(
                text(
                    "INSERT INTO sellers (id, name, email, password_hash, zip_code, created_at,"
                    " updated_at) VALUES (:id, 'S', :email, 'h', '02139', now(), now())"
                ),
                {"id": account, "email": f"s{number}@example.com"},
            )
        for name, owner, target, enabled, failing, age, livemode in endpoints:
            await connection.execute(
                insert_endpoint,
                {
                    "id": ids[name],
                    "seller": owner,
                    "url": target,
                    "enabled": enabled,
                    "failing": failing,
                    "age": age,
                    "livemode": livemode,
                },
            )

    await upgrade(scratch_url)

    async with scratch_engine.connect() as connection:
        kept = set((await connection.execute(text("SELECT id FROM webhook_endpoints"))).scalars())
    assert kept == {ids[name] for name in ("healthy", "test_mode", "other_url", "other_seller")}
    assert (
        "md5((url)::text)"
        in (await indexes(scratch_engine, "webhook_endpoints"))[
            "ix_webhook_endpoints_seller_mode_url"
        ]
    )
    duplicate = {
        "id": uuid.uuid4(),
        "seller": seller,
        "url": url,
        "enabled": True,
        "failing": False,
        "age": 0,
        "livemode": True,
    }
    with pytest.raises(IntegrityError, match="ix_webhook_endpoints_seller_mode_url"):
        async with scratch_engine.begin() as connection:
            await connection.execute(insert_endpoint, duplicate)
