"""Shipment decisions: assignment, ownership, the status machine, idempotency, delivery codes,
and the limits that keep one account from abusing them (product.md §10).

Races are settled by PostgreSQL: partner capacity by a locked conditional UPDATE, status changes,
timeline sequences and the timeline's length by a row lock on the shipment, idempotency by the
key's primary key, an unverified seller's shipment count by a conditional UPDATE of its row.
Rates (creates per seller, code guesses per partner, recipient emails per hour) are counted in
Redis, before any row is locked.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from bisect import insort
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from backend.accounts.errors import WrongAccountKind
from backend.accounts.models import Partner, Seller
from backend.accounts.tokens import LinkTokens
from backend.config import Settings
from backend.db import UnitOfWork, utcnow
from backend.errors import DomainError, RateLimited, problem_document
from backend.outbox.wording import human_day
from backend.pagination import decode_cursor, split_page
from backend.shipments.assignment import AssignedPartner, PartnerAssignment
from backend.shipments.corrections import (
    CORRECTION_DESCRIPTION,
    corrected_fields,
    correction_changes,
)
from backend.shipments.delivery_codes import DeliveryCodes
from backend.shipments.errors import (
    DeliveryLocked,
    DetailsLocked,
    EmailNotVerified,
    IdempotencyKeyReused,
    InvalidEventTime,
    InvalidTransition,
    NoPartnerAvailable,
    ShipmentNotFound,
    TimelineFull,
    VersionMismatch,
)
from backend.shipments.failures import FailureReason
from backend.shipments.idempotency import IdempotencyKeys
from backend.shipments.limits import EmailSlot, ShipmentLimits
from backend.shipments.live import announce_after_commit
from backend.shipments.models import Shipment, ShipmentEvent
from backend.shipments.recipient_emails import RecipientEmails, eta_moved_a_day
from backend.shipments.repository import LoadedShipment, ShipmentRepository, Visibility
from backend.shipments.schemas import (
    CoverageRead,
    DeliveryDetailsUpdate,
    ScanBatch,
    ScanIn,
    ScanOutcome,
    ScanResult,
    ScanResults,
    ShipmentCreate,
    ShipmentPage,
    ShipmentRead,
    ShipmentUpdate,
)
from backend.shipments.simulation import Scenario, Step, steps_to
from backend.shipments.status import (
    CANCELLABLE,
    CORRECTABLE,
    PARTNER_TRANSITIONS,
    TERMINAL,
    ShipmentStatus,
    allowed_next,
)
from backend.shipments.timeline import (
    EVENT_DESCRIPTIONS,
    EventDetails,
    failed_attempt_reason,
    new_event,
    report_details,
    status_at,
    time_order,
)
from backend.shipments.views import ShipmentViews, timeline_view
from backend.webhooks.events import (
    SHIPMENT_CANCELLED,
    SHIPMENT_CREATED,
    SHIPMENT_DELIVERED,
    SHIPMENT_UPDATED,
    EventPublisher,
)

# No 0/O, 1/I/L or U: readable over the phone. 14 of 30 symbols is about 68 bits.
TRACKING_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
TRACKING_NUMBER_LENGTH = 14
# A create whose chosen partner filled up before it took the slot chooses again, this many
# times in all: each lost race means another create got a slot, so a partner with room is
# rarely lost more than once or twice.
ASSIGNMENT_ATTEMPTS = 10
# Before a test key's idempotency keys: a client's own contain no space (IdempotencyRecord.key).
TEST_KEY_PREFIX = "test "


def new_tracking_number() -> str:
    return "".join(secrets.choice(TRACKING_ALPHABET) for _ in range(TRACKING_NUMBER_LENGTH))


def request_fingerprint(body: ShipmentCreate) -> str:
    """A hash of what the body asks for. Tags are a set (already lower-cased and merged by the
    schema), so their order must not make a retry look like another request."""
    request = body.model_dump(mode="json")
    request["tags"] = sorted(request["tags"])
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CreatedShipment:
    shipment: ShipmentRead
    # True when this is the stored response to an earlier request with the same key.
    replayed: bool


class ShipmentService:
    """Shipments as one account sees and changes them: a seller its own, a partner the ones
    assigned to it. Every query carries that ownership (`Visibility`)."""

    def __init__(
        self,
        account: Seller | Partner,
        unit: UnitOfWork,
        codes: DeliveryCodes,
        redis: Redis,
        *,
        limits: ShipmentLimits,
        links: LinkTokens,
        settings: Settings,
        livemode: bool = True,
    ) -> None:
        self._account = account
        # A test key's service sees and creates test shipments only (product.md §11.2).
        self._livemode = livemode
        self._visibility = Visibility.of(account, livemode=livemode)
        self._unit = unit
        self._shipments = ShipmentRepository(unit.session)
        self._assignment = PartnerAssignment(unit.session)
        self._idempotency = IdempotencyKeys(unit.session)
        self._redis = redis
        self._events = EventPublisher(unit.session)
        self._codes = codes
        public_base_url = settings.public_base_url.rstrip("/")
        self._views = ShipmentViews(public_base_url, partner_pii_days=settings.partner_pii_days)
        self._emails = RecipientEmails(
            unit.session,
            links=links,
            public_base_url=public_base_url,
            review_link_ttl_seconds=settings.review_link_ttl_seconds,
        )
        self._transit = timedelta(days=settings.default_transit_days)
        self._limits = limits
        self._unverified_limit = settings.unverified_seller_shipment_limit
        self._max_events = settings.max_events_per_shipment
        self._max_attempts = settings.max_delivery_attempts
        self._max_scan_age_hours = settings.max_scan_age_hours
        self._max_scan_age = timedelta(hours=settings.max_scan_age_hours)
        self._clock_skew = timedelta(seconds=settings.scan_clock_skew_seconds)

    # --- reading -------------------------------------------------------------------------

    async def get(self, shipment_id: uuid.UUID) -> ShipmentRead:
        loaded = await self._shipments.get(shipment_id, self._visibility)
        if loaded is None:
            raise ShipmentNotFound()
        return self._view(loaded)

    async def list_page(
        self,
        *,
        limit: int,
        cursor: str | None,
        status: ShipmentStatus | None,
        tag: str | None,
        reference: str | None = None,
        with_timeline: bool = True,
    ) -> ShipmentPage:
        if reference is not None and self._visibility.for_partner:
            raise WrongAccountKind(
                "`reference` is the seller's own; partners filter by `status` and `tag`."
            )
        after = decode_cursor(cursor) if cursor else None
        # One more than asked for tells whether another page follows.
        loaded = await self._shipments.page(
            self._visibility,
            limit=limit + 1,
            after=after,
            status=status,
            tag=tag,
            reference=reference,
            with_timeline=with_timeline,
        )
        for_partner = self._visibility.for_partner
        views = [
            self._views.list_item(shipment, for_partner=for_partner, with_timeline=with_timeline)
            for shipment in loaded
        ]
        items, next_cursor = split_page(views, limit)
        return ShipmentPage(items=items, next_cursor=next_cursor)

    async def coverage(self, zip_code: str) -> CoverageRead:
        """Whether a shipment to `zip_code` could be assigned now; a test key's always can (its
        simulated partner serves every zip)."""
        if not self._livemode:
            return CoverageRead(zip_code=zip_code, served=True, available=True)
        coverage = await self._assignment.coverage(zip_code)
        return CoverageRead(zip_code=zip_code, served=coverage.served, available=coverage.available)

    # --- sellers -------------------------------------------------------------------------

    async def create(self, body: ShipmentCreate, idempotency_key: str | None) -> CreatedShipment:
        seller_id = self._account.id
        # Redis first, while this request holds no row lock: the seller's rate (429), and the
        # slot of the recipient's email in the seller's hourly budget.
        email_slot = await self._limits.admit_create(seller_id)
        try:
            created = await self._create(body, idempotency_key, email_slot.send_at)
        except DomainError:
            await self._return_email_slot(email_slot)  # refused: nothing stored, nothing sent
            raise
        if created.replayed or not self._livemode:
            # Nothing was queued: a replay sends nothing, a test shipment's email is recorded.
            await self._return_email_slot(email_slot)
        return created

    async def _create(
        self, body: ShipmentCreate, idempotency_key: str | None, email_not_before: datetime | None
    ) -> CreatedShipment:
        seller = self._account
        if idempotency_key is not None:
            # A test key's keys are its own: the same key in live mode names another request.
            idempotency_key = (
                idempotency_key if self._livemode else f"{TEST_KEY_PREFIX}{idempotency_key}"
            )
            fingerprint = request_fingerprint(body)
            earlier = await self._idempotency.claim(
                seller.id, idempotency_key, fingerprint, utcnow()
            )
            if earlier is not None:
                if earlier.fingerprint != fingerprint:
                    raise IdempotencyKeyReused()
                return CreatedShipment(ShipmentRead.model_validate(earlier.response_body), True)
        if not self._livemode:
            return await self._create_test_shipment(body, idempotency_key)
        if seller.email_verified_at is None:
            await self._count_unverified_shipment()

        # Everything is written before the partner's slot is taken, so that the partner's row
        # (which every create into its zips needs) is locked only from `take_slot` to the
        # commit. A partner that fills up meanwhile refuses the slot: the attempt's writes are
        # undone (a savepoint) and the create chooses again, while anyone has room.
        session = self._unit.session
        for _ in range(ASSIGNMENT_ATTEMPTS):
            attempt = await session.begin_nested()
            partner = await self._assignment.choose(body.destination.zip_code)
            if partner is None:
                break
            created, first = await self._write_shipment(
                body, partner, idempotency_key, email_not_before
            )
            if await self._assignment.take_slot(partner.id):
                await attempt.commit()
                announce_after_commit(self._unit, self._redis, created.id, [first])
                return CreatedShipment(created, replayed=False)
            await attempt.rollback()
        coverage = await self._assignment.coverage(body.destination.zip_code)
        raise NoPartnerAvailable.because(body.destination.zip_code, served=coverage.served)

    async def _create_test_shipment(
        self, body: ShipmentCreate, idempotency_key: str | None
    ) -> CreatedShipment:
        """A test shipment, carried by the seller's simulated partner: no real partner is
        chosen, no capacity taken, no unverified-seller allowance spent, and its recipient's
        emails are recorded, not sent."""
        partner = await self._assignment.simulated_partner(self._account.id)
        created, first = await self._write_shipment(body, partner, idempotency_key, None)
        announce_after_commit(self._unit, self._redis, created.id, [first])
        return CreatedShipment(created, replayed=False)

    async def _write_shipment(
        self,
        body: ShipmentCreate,
        partner: AssignedPartner,
        idempotency_key: str | None,
        email_not_before: datetime | None,
    ) -> tuple[ShipmentRead, ShipmentEvent]:
        """The new shipment with its first event, tags, email, idempotency record and feed
        event, all flushed: what the create writes, but the partner's slot. Returns its view
        and its first event."""
        seller = self._account
        # After the waits on the key and the seller's row: the closer to the commit, the less
        # a keyset page read meanwhile can miss the new shipment.
        now = utcnow()
        shipment = Shipment(
            tracking_number=new_tracking_number(),
            seller_id=seller.id,
            partner_id=partner.id,
            status=ShipmentStatus.placed,
            content=body.content,
            weight_kg=body.weight_kg,
            destination_zip=body.destination.zip_code,
            destination_address_line=body.destination.address_line,
            destination_city=body.destination.city,
            recipient_name=body.recipient.name,
            recipient_email=body.recipient.email,
            recipient_phone=body.recipient.phone,
            reference=body.reference,
            estimated_delivery=now + self._transit,
            last_sequence=1,
            created_at=now,
            updated_at=now,
            livemode=self._livemode,
        )
        shipment.review = None  # new: nothing to load, and views read it
        first = new_event(
            shipment, EventDetails(EVENT_DESCRIPTIONS[shipment.status]), shipment.status
        )
        shipment.timeline = [first]
        session = self._unit.session
        session.add(shipment)
        await session.flush()  # the tags, the idempotency record and the events refer to it
        await self._shipments.add_tags(shipment.id, body.tags)
        created = self._view(LoadedShipment(shipment, partner.name, sorted(body.tags)))
        self._emails.created(
            shipment,
            partner_name=partner.name,
            seller_name=seller.name,
            delivery_day=human_day(shipment.estimated_delivery),
            not_before=email_not_before,
        )
        if idempotency_key is not None:
            await self._idempotency.record_response(
                seller.id, idempotency_key, shipment.id, created.model_dump(mode="json")
            )
        initial = created.model_dump(
            mode="json", include={"status", "estimated_delivery", "partner"}
        )
        await self._record_events(created, [SHIPMENT_CREATED], initial, first)
        await session.flush()  # the email and the feed event, before the slot is taken
        return created, first

    async def cancel(self, shipment_id: uuid.UUID, *, note: str | None = None) -> ShipmentRead:
        """Cancel a `placed` shipment; `note` replaces the usual timeline line."""
        loaded = await self._locked(shipment_id)
        return await self._apply_cancel(loaded, note)

    async def _apply_cancel(self, loaded: LoadedShipment, note: str | None) -> ShipmentRead:
        shipment = loaded.shipment
        if shipment.status not in CANCELLABLE:
            raise InvalidTransition(
                f"Only placed shipments can be cancelled; this one is {shipment.status.value}.",
                current_status=shipment.status.value,
                allowed_next=[],
            )
        description = note or EVENT_DESCRIPTIONS[ShipmentStatus.cancelled]
        event = await self._move(shipment, ShipmentStatus.cancelled, EventDetails(description))
        # Only a seller cancels: its own request, or the expiry sweep acting as the shipment's
        # seller (backend/shipments/expiry.py).
        self._emails.cancelled(shipment, seller_name=self._account.name)
        cancelled = self._view(loaded)
        changes = {"status": ShipmentStatus.cancelled.value}
        await self._publish(cancelled, [SHIPMENT_UPDATED, SHIPMENT_CANCELLED], changes, event)
        return cancelled

    async def replace_tags(self, shipment_id: uuid.UUID, names: list[str]) -> ShipmentRead:
        loaded = await self._locked(shipment_id)
        await self._shipments.replace_tags(loaded.shipment.id, names)
        self._bump_version(loaded.shipment)
        return self._view(LoadedShipment(loaded.shipment, loaded.partner_name, sorted(names)))

    async def correct_delivery_details(
        self,
        shipment_id: uuid.UUID,
        correction: DeliveryDetailsUpdate,
        *,
        expected_version: int | None,
    ) -> ShipmentRead:
        """The seller's correction of the recipient's contact or the destination, while the
        shipment is placed or in transit (product.md §12.3). A new zip code the partner does not
        serve moves the shipment to one that does and has room, in this transaction (409, and
        nothing changed, when none can take it). A correction that changes nothing records
        nothing.

        Its email to the recipient takes a slot of the seller's hourly budget, booked in Redis
        before the row lock (as a create's): corrections cannot mail any address at will."""
        email_slot = await self._limits.book_recipient_email(self._account.id)
        try:
            corrected, emailed = await self._correct(
                shipment_id, correction, expected_version, email_slot.send_at
            )
        except DomainError:
            await self._return_email_slot(email_slot)
            raise
        if not emailed:
            await self._return_email_slot(email_slot)
        return corrected

    async def _correct(
        self,
        shipment_id: uuid.UUID,
        correction: DeliveryDetailsUpdate,
        expected_version: int | None,
        email_not_before: datetime | None,
    ) -> tuple[ShipmentRead, bool]:
        """The correction, and whether it queued an email (a test shipment's is recorded)."""
        loaded = await self._locked(shipment_id)
        shipment = loaded.shipment
        _check_version(shipment, expected_version)
        if shipment.status not in CORRECTABLE:
            raise DetailsLocked(current_status=shipment.status.value)
        changed = corrected_fields(shipment, correction)
        if not changed:
            return self._view(loaded), False
        self._check_room(shipment, shipment.status)
        new_zip = changed.get("destination_zip")
        previous_partner = shipment.partner_id
        if new_zip is not None:
            loaded = await self._follow_new_zip(loaded, new_zip)
        for field, value in changed.items():
            setattr(shipment, field, value)
        details = EventDetails(description=CORRECTION_DESCRIPTION)
        event = await self._move(shipment, shipment.status, details)
        view = self._view(loaded)
        reassigned = shipment.partner_id != previous_partner
        changes = correction_changes(view, changed, reassigned=reassigned)
        await self._publish(view, [SHIPMENT_UPDATED], changes, event)
        self._emails.details_corrected(shipment, not_before=email_not_before)
        return view, shipment.livemode

    async def _follow_new_zip(self, loaded: LoadedShipment, zip_code: str) -> LoadedShipment:
        """The shipment with the partner that will carry it to `zip_code`: its own when it
        serves that zip (or it is a test shipment), else the least-loaded one with room, whose
        slot it takes while giving its old partner's back."""
        shipment = loaded.shipment
        if not shipment.livemode or await self._assignment.serves(shipment.partner_id, zip_code):
            return loaded
        session = self._unit.session
        for _ in range(ASSIGNMENT_ATTEMPTS):
            attempt = await session.begin_nested()
            partner = await self._assignment.choose(zip_code)
            if partner is None:
                await attempt.rollback()
                break
            if await self._assignment.move_slot(shipment.partner_id, partner.id):
                await attempt.commit()
                shipment.partner_id = partner.id
                await self._shipments.move_tags_to_partner(shipment.id, partner.id)
                return LoadedShipment(shipment, partner.name, loaded.tags)
            await attempt.rollback()
        coverage = await self._assignment.coverage(zip_code)
        raise NoPartnerAvailable.because(zip_code, served=coverage.served)

    # --- partners ------------------------------------------------------------------------

    async def report(
        self,
        shipment_id: uuid.UUID,
        change: ShipmentUpdate,
        *,
        expected_version: int | None,
    ) -> ShipmentRead:
        guesses_code = _guesses_code(change)
        if guesses_code:
            # Counted before the row lock, so no lock waits on Redis (429 past the budget).
            await self._limits.count_code_guess(self._account.id)
        loaded = await self._locked(shipment_id)
        _check_version(loaded.shipment, expected_version)
        reported = await self._apply_report(loaded, change, counted_guess=guesses_code)
        return reported.view

    async def _apply_report(
        self,
        loaded: LoadedShipment,
        change: ShipmentUpdate,
        *,
        counted_guess: bool = False,
        scan_id: str | None = None,
    ) -> Reported:
        """One report on a locked shipment. `counted_guess`: the code it carries was counted
        against the partner's budget of guesses; `scan_id`: the device's id of the scan that
        carries it (POST /scans).

        Every refusal comes before the first change to the shipment, but a wrong delivery
        code's, which is kept (`keep_changes`): a batch of scans carries on after a refused
        one without a savepoint."""
        shipment = loaded.shipment
        target = change.status or shipment.status
        self._check_transition(shipment, change.status)
        if target is not ShipmentStatus.returned and self._codes.locked(shipment):
            raise DeliveryLocked()
        failure = failed_attempt_reason(shipment, change)
        occurred_at = self._occurred_at(shipment, change.occurred_at)
        self._check_room(shipment, target)
        if target is ShipmentStatus.delivered:
            self._redeem_code(shipment, change.verification_code)
            if counted_guess:
                # A right code is not a guess the partner's budget is for.
                forget = partial(self._limits.forget_code_guess, self._account.id)
                self._unit.after_commit(forget)
        previous_eta = shipment.estimated_delivery
        if change.estimated_delivery is not None:
            shipment.estimated_delivery = change.estimated_delivery
        # What this report alters, for the feed; read before _move applies the status.
        changes = change.model_dump(mode="json", include={"estimated_delivery"}, exclude_none=True)
        if target is not shipment.status:
            changes["status"] = target.value
        if failure is not None:
            shipment.delivery_attempts += 1
            changes |= {"failure_reason": failure.value, "attempts": shipment.delivery_attempts}
        # Going out for delivery (again): a fresh code, stored hashed with this change.
        going_out = change.status is ShipmentStatus.out_for_delivery
        code = self._codes.issue(shipment) if going_out else None
        details = report_details(change, failure, occurred_at, scan_id)
        # A report without a status (a scan, a note) happened in the status of its moment.
        shown_status = None
        if change.status is None and occurred_at is not None:
            shown_status = status_at(shipment.timeline, occurred_at)
        event = await self._move(shipment, target, details, shown_status=shown_status)
        view = self._view(loaded)
        delivered = [SHIPMENT_DELIVERED] if change.status is ShipmentStatus.delivered else []
        await self._publish(view, [SHIPMENT_UPDATED, *delivered], changes, event)
        if failure is not None and self._attempts_exhausted(shipment):
            view = await self._return_after_attempts(loaded, occurred_at)
        self._tell_recipient(loaded, change, failure, code, previous_eta)
        return Reported(view, code[0] if code is not None else None, event)

    def _attempts_exhausted(self, shipment: Shipment) -> bool:
        return (
            shipment.status is ShipmentStatus.in_transit
            and shipment.delivery_attempts >= self._max_attempts
        )

    async def _return_after_attempts(
        self, loaded: LoadedShipment, occurred_at: datetime | None
    ) -> ShipmentRead:
        """The last allowed attempt failed: the shipment goes back to its sender by itself,
        with an event of its own, at the moment of that attempt (recorded right after it; now
        when the attempt gave no time)."""
        shipment = loaded.shipment
        description = (
            f"Returned to the sender after {shipment.delivery_attempts} failed delivery attempts"
        )
        details = EventDetails(description=description, occurred_at=occurred_at)
        event = await self._move(shipment, ShipmentStatus.returned, details)
        view = self._view(loaded)
        await self._publish(
            view, [SHIPMENT_UPDATED], {"status": ShipmentStatus.returned.value}, event
        )
        return view

    def _tell_recipient(
        self,
        loaded: LoadedShipment,
        change: ShipmentUpdate,
        failure: FailureReason | None,
        code: tuple[str, datetime] | None,
        previous_eta: datetime,
    ) -> None:
        """The recipient's emails about this report, if it changed anything they should know:
        the step it reached, and a delivery estimate moved by a day or more."""
        shipment = loaded.shipment
        if code is not None:
            self._emails.delivery_code(shipment, code)
        elif change.status is ShipmentStatus.delivered:
            self._emails.delivered(shipment, partner_name=loaded.partner_name)
        elif shipment.status is ShipmentStatus.returned:
            self._emails.returned(shipment, reason=failure, attempts=shipment.delivery_attempts)
        elif failure is not None:
            attempts_left = self._max_attempts - shipment.delivery_attempts
            self._emails.failed_attempt(
                shipment,
                reason=failure,
                attempts=shipment.delivery_attempts,
                attempts_left=attempts_left,
            )
        if shipment.status not in TERMINAL and eta_moved_a_day(
            previous_eta, shipment.estimated_delivery
        ):
            self._emails.eta_moved(shipment, previous=previous_eta)

    def _occurred_at(self, shipment: Shipment, given: datetime | None) -> datetime | None:
        """When a reported event happened, if the partner said so and it is plausible (a
        device's clock a little ahead counts as now); None: when it is recorded."""
        if given is None:
            return None
        now = utcnow()
        if given > now + self._clock_skew:
            raise InvalidEventTime(
                "`occurred_at` is in the future; check the device's clock.", occurred_at="future"
            )
        if given < now - self._max_scan_age:
            raise InvalidEventTime(
                f"`occurred_at` is more than {self._max_scan_age_hours} hours old "
                "(MAX_SCAN_AGE_HOURS): too late to record.",
                occurred_at="too_old",
            )
        if given < shipment.created_at:
            raise InvalidEventTime(
                "`occurred_at` is before the shipment was created.", occurred_at="before_creation"
            )
        return min(given, now)

    async def record_scans(self, batch: ScanBatch) -> ScanResults:
        """A batch of scans, each a report on one of the partner's shipments, with one result
        per scan (product.md §12.2). A scan whose `scan_id` its shipment has recorded before is
        a duplicate; a refused scan changes nothing and the others carry on."""
        refused = await self._count_scan_guesses(batch.scans)
        numbers = sorted({scan.tracking_number.upper() for scan in batch.scans})
        locked = await self._shipments.lock_by_tracking_numbers(numbers, self._visibility)
        results = []
        for index, scan in enumerate(batch.scans):
            loaded = locked.get(scan.tracking_number.upper())
            refusal = refused.get(index)
            results.append(await self._record_scan(loaded, scan, refusal))
        return ScanResults(results=results)

    async def _count_scan_guesses(self, scans: list[ScanIn]) -> dict[int, DomainError]:
        """Each scan's delivery code counted against the partner's budget of guesses, before
        any row lock (as a single report's): the scans past the budget, refused (429)."""
        refused: dict[int, DomainError] = {}
        for index, scan in enumerate(scans):
            if _guesses_code(scan):
                try:
                    await self._limits.count_code_guess(self._account.id)
                except RateLimited as error:
                    refused[index] = error
        return refused

    async def _record_scan(
        self, loaded: LoadedShipment | None, scan: ScanIn, refusal: DomainError | None
    ) -> ScanResult:
        def result(
            outcome: ScanOutcome, sequence: int | None = None, problem: DomainError | None = None
        ) -> ScanResult:
            return ScanResult(
                scan_id=scan.scan_id,
                tracking_number=scan.tracking_number,
                result=outcome,
                sequence=sequence,
                problem=problem_document(problem) if problem is not None else None,
            )

        if loaded is None:
            detail = "No shipment with this tracking number is assigned to you."
            return result("rejected", problem=ShipmentNotFound(detail))
        if refusal is not None:
            return result("rejected", problem=refusal)
        recorded = next((e for e in loaded.shipment.timeline if e.scan_id == scan.scan_id), None)
        if recorded is not None:
            if _guesses_code(scan):
                # A scan sent again records nothing, so its code was no guess either.
                forget = partial(self._limits.forget_code_guess, self._account.id)
                self._unit.after_commit(forget)
            return result("duplicate", recorded.sequence)
        try:
            reported = await self._apply_report(
                loaded, scan, counted_guess=_guesses_code(scan), scan_id=scan.scan_id
            )
        except DomainError as error:
            return result("rejected", problem=error)
        return result("accepted", reported.event.sequence)

    # --- test mode -----------------------------------------------------------------------

    async def advance_test_shipment(
        self, shipment_id: uuid.UUID, to: ShipmentStatus, scenario: Scenario | None
    ) -> ShipmentRead:
        """Move a test shipment to `to` along `scenario`'s path, step by step, as its simulated
        partner would report it (and its seller cancel it): the same transitions, events,
        webhooks and recorded emails as a live shipment's. Only a test key's service sees test
        shipments, so a live one is not found (404)."""
        if self._livemode:
            raise ShipmentNotFound()
        loaded = await self._locked(shipment_id)
        # All the steps or none: a refusal on the way (a 4xx that keeps its changes) must not
        # leave the earlier steps committed.
        async with self._unit.session.begin_nested():
            return await self._walk(loaded, steps_to(loaded.shipment.status, to, scenario))

    async def _walk(self, loaded: LoadedShipment, steps: list[Step]) -> ShipmentRead:
        shipment = loaded.shipment
        # Already out for delivery: the recipient shows the code of its last email.
        code = await self._emails.last_recorded_code(shipment)
        view = self._view(loaded)
        for step in steps:
            if step.status is ShipmentStatus.cancelled:
                view = await self._apply_cancel(loaded, step.note)
                continue
            delivering = step.status is ShipmentStatus.delivered
            if delivering and (code is None or not self._codes.usable(shipment)):
                # The code expired while the test shipment waited at the door (a day by
                # default): the simulated partner asks for a fresh one, as a courier would.
                code, _ = self._codes.issue(shipment)
            report = ShipmentUpdate.model_construct(
                status=step.status,
                note=step.note,
                failure_reason=step.failure_reason,
                verification_code=code if delivering else None,
            )
            reported = await self._apply_report(loaded, report)
            view = reported.view
            code = reported.code or code
        return view

    # --- internals -----------------------------------------------------------------------

    async def _publish(
        self,
        shipment: ShipmentRead,
        types: list[str],
        changes: dict[str, Any],
        event: ShipmentEvent,
    ) -> None:
        """The new timeline `event`: for the feed, webhooks and live streams."""
        announce_after_commit(self._unit, self._redis, shipment.id, [event])
        await self._record_events(shipment, types, changes, event)

    async def _record_events(
        self,
        shipment: ShipmentRead,
        types: list[str],
        changes: dict[str, Any],
        event: ShipmentEvent,
    ) -> None:
        """The change in the feed and in the webhook deliveries it queues. An event says what
        changed (`changes`: only the fields this change set), not the whole shipment
        (webhooks/schemas.py ShipmentEventData)."""
        data = {
            "shipment_id": str(shipment.id),
            "tracking_number": shipment.tracking_number,
            "reference": shipment.reference,
            "status": shipment.status.value,
            "version": shipment.version,
            "changes": changes,
            "timeline_event": timeline_view([event])[0].model_dump(mode="json"),
        }
        await self._events.publish(
            shipment.seller_id, types, data, shipment_id=shipment.id, livemode=shipment.livemode
        )

    async def _locked(self, shipment_id: uuid.UUID) -> LoadedShipment:
        loaded = await self._shipments.lock(shipment_id, self._visibility)
        if loaded is None:
            raise ShipmentNotFound()
        return loaded

    def _redeem_code(self, shipment: Shipment, code: str | None) -> None:
        # A wrong try counts although the request fails: these errors keep the unit's changes,
        # and the session writes the counted try at the commit.
        self._codes.redeem(shipment, code)

    async def _count_unverified_shipment(self) -> None:
        counted = await self._shipments.count_unverified_shipment(
            self._account.id, self._unverified_limit
        )
        if not counted:
            raise EmailNotVerified(
                f"A seller whose email address is not verified may create "
                f"{self._unverified_limit} shipments. Follow the link in the email sent at "
                "sign-up to create more."
            )

    async def _return_email_slot(self, slot: EmailSlot) -> None:
        # Best effort: a slot not given back only makes the seller's budget stricter, and
        # this must not turn the request's own answer into a 503.
        with suppress(RedisError):
            await self._limits.return_email_slot(self._account.id, slot)

    def _check_room(self, shipment: Shipment, target: ShipmentStatus) -> None:
        """The timeline's last place is kept for the final status, so a shipment can always
        be delivered, returned or cancelled, and never holds more than the maximum."""
        if target in TERMINAL:
            return
        if shipment.last_sequence >= self._max_events - 1:
            raise TimelineFull(
                f"This shipment's timeline holds {shipment.last_sequence} events, the most it "
                "may before its final status; only delivered or returned can still be reported."
            )

    @staticmethod
    def _check_transition(shipment: Shipment, target: ShipmentStatus | None) -> None:
        current = shipment.status
        if target is None and current not in TERMINAL:
            return  # a note, a location or a new ETA for the current state
        if target is not None and target in PARTNER_TRANSITIONS[current]:
            return
        allowed = allowed_next(current)
        wanted = target.value if target is not None else "an update"
        raise InvalidTransition(
            f"A {current.value} shipment cannot take {wanted}; allowed next: "
            f"{', '.join(state.value for state in allowed) or 'none (it is final)'}.",
            current_status=current.value,
            allowed_next=[state.value for state in allowed],
        )

    async def _move(
        self,
        shipment: Shipment,
        target: ShipmentStatus,
        details: EventDetails,
        *,
        shown_status: ShipmentStatus | None = None,
    ) -> ShipmentEvent:
        """Apply one accepted change: status, version, one timeline event (showing
        `shown_status`, by default the new status), freed capacity. Returns the event."""
        reaches_final_state = target in TERMINAL and shipment.status not in TERMINAL
        shipment.status = target
        self._bump_version(shipment)
        # Under the shipment's row lock: no gaps, no duplicates.
        shipment.last_sequence += 1
        event = new_event(shipment, details, shown_status or target)
        # In its place by time, as the relationship loads the timeline: views read it in order.
        insort(shipment.timeline, event, key=time_order)
        if reaches_final_state and shipment.livemode:
            # The partner's slot is free the moment this commits (a test shipment took none).
            await self._assignment.release(shipment.partner_id)
        return event

    @staticmethod
    def _bump_version(shipment: Shipment) -> None:
        shipment.version += 1
        shipment.updated_at = utcnow()

    def _view(self, loaded: LoadedShipment) -> ShipmentRead:
        return self._views.view(loaded, for_partner=self._visibility.for_partner)


@dataclass(frozen=True, slots=True)
class Reported:
    """A partner's report, applied: the shipment's view after it, the delivery code it issued
    (going out for delivery), and the timeline event it recorded."""

    view: ShipmentRead
    code: str | None
    event: ShipmentEvent


def _guesses_code(change: ShipmentUpdate) -> bool:
    return change.status is ShipmentStatus.delivered and change.verification_code is not None


def _check_version(shipment: Shipment, expected_version: int | None) -> None:
    if expected_version is not None and shipment.version != expected_version:
        raise VersionMismatch(
            f"The shipment is at version {shipment.version}, not {expected_version}.",
            current_version=shipment.version,
        )
