"""`shiptrack partners list | approve | suspend | rename`: the operator's partner commands.

Each command is one unit of work on the database (backend/accounts/partner_approval.py makes
the decisions) and returns the text to print. Emails it queues (the approval) are sent by the
outbox worker: `shiptrack worker`, or `shiptrack serve` in embedded mode.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from pydantic import TypeAdapter, ValidationError

from backend.accounts.models import Partner, PartnerStatus
from backend.accounts.partner_approval import (
    PartnerAdministration,
    PartnerChange,
    SuspensionReason,
)
from backend.config import Settings
from backend.db import create_engine, create_sessionmaker, unit_of_work
from backend.fields import Name

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 10_000


def _validated(adapter: TypeAdapter[str], value: str) -> str:
    try:
        return adapter.validate_python(value)
    except ValidationError as error:
        raise argparse.ArgumentTypeError(error.errors()[0]["msg"]) from None


_NAME = TypeAdapter(Name)
_REASON = TypeAdapter(SuspensionReason)


def partner_name(value: str) -> str:
    """An argparse type: the same rules as a name sent to the API."""
    return _validated(_NAME, value)


def suspension_reason(value: str) -> str:
    return _validated(_REASON, value)


def list_limit(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIST_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_LIST_LIMIT}")
    return int(value)


def add_partner_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    handler: Callable[[argparse.Namespace], None],
) -> None:
    """The `partners` command group; `handler` connects to the database and runs the action."""
    partners = commands.add_parser(
        "partners", help="approve, suspend, rename and list delivery partners (operator)"
    )
    partners.set_defaults(handler=handler)
    actions = partners.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="list partners, oldest first")
    operator_statuses = [
        status.value for status in PartnerStatus if status is not PartnerStatus.simulated
    ]
    listing.add_argument("--status", choices=operator_statuses)
    listing.add_argument("--limit", type=list_limit, default=DEFAULT_LIST_LIMIT)

    approve = actions.add_parser(
        "approve", help="let a pending (or suspended) partner receive shipments; emails it"
    )
    approve.add_argument("email")

    suspend = actions.add_parser(
        "suspend", help="stop a partner's access to shipments and its new assignments"
    )
    suspend.add_argument("email")
    suspend.add_argument("--reason", required=True, type=suspension_reason)

    rename = actions.add_parser("rename", help="change the name recipients see")
    rename.add_argument("email")
    rename.add_argument("name", type=partner_name)


async def run_partner_command(
    settings: Settings, database_url: str, args: argparse.Namespace
) -> str:
    """Runs one `partners` action; raises PartnerNotFound for an unknown email."""
    engine = create_engine(settings, database_url)
    try:
        async with unit_of_work(create_sessionmaker(engine)) as unit:
            partners = PartnerAdministration(unit, settings.public_base_url)
            match args.action:
                case "list":
                    status = PartnerStatus(args.status) if args.status else None
                    return describe_partners(await partners.list(status, args.limit))
                case "approve":
                    return _approved(await partners.approve(args.email))
                case "suspend":
                    return _suspended(await partners.suspend(args.email, args.reason))
                case "rename":
                    return _renamed(await partners.rename(args.email, args.name))
                case _:
                    raise ValueError(f"unknown partners action {args.action!r}")
    finally:
        await engine.dispose()


def _who(partner: Partner) -> str:
    return f"{partner.name} <{partner.email}>"


def _approved(change: PartnerChange) -> str:
    if not change.changed:
        return f"{_who(change.partner)} was already approved; nothing changed."
    return (
        f"Approved {_who(change.partner)}: new shipments to its zip codes can now be assigned "
        "to it. The approval email is queued (the outbox worker sends it)."
    )


def _suspended(change: PartnerChange) -> str:
    partner = change.partner
    if not change.changed:
        return f"{_who(partner)} was already suspended for this reason; nothing changed."
    return (
        f"Suspended {_who(partner)}: {partner.suspended_reason}\n"
        f"Its {partner.active_shipments} active shipment(s) stay assigned to it; their sellers "
        "still see them, the partner can no longer see or update them."
    )


def _renamed(change: PartnerChange) -> str:
    if not change.changed:
        return f"{_who(change.partner)} already has this name; nothing changed."
    return (
        f"Renamed {change.partner.email} to {change.partner.name!r}; recipients see the new "
        "name at once."
    )


def describe_partners(partners: Sequence[Partner]) -> str:
    if not partners:
        return "No partners."
    header = f"{'STATUS':<10} {'EMAIL':<40} {'NAME':<30} {'ACTIVE':>6}/{'CAP':<6} SIGNED UP"
    lines = [header]
    for partner in partners:
        lines.append(
            f"{partner.status:<10} {partner.email:<40} {partner.name:<30} "
            f"{partner.active_shipments:>6}/{partner.max_handling_capacity:<6} "
            f"{partner.created_at:%Y-%m-%d %H:%M}"
        )
        if partner.status == PartnerStatus.suspended:
            lines.append(f"{'':<10} suspended: {partner.suspended_reason}")
    return "\n".join(lines)
