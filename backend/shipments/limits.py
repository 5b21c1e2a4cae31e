"""Per-account limits on shipments that live in Redis, shared by every replica: how fast a
seller creates shipments, when its recipients' "shipment created" emails may go out, and how
fast a partner guesses delivery codes.

The limits that must hold exactly (an unverified seller's shipments, a timeline's length, wrong
codes per shipment) are settled in PostgreSQL instead, under the rows they guard.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from backend.config import Settings
from backend.errors import RateLimited
from backend.rate_limit import FixedWindowLimiter

HOUR = 3600
MINUTE = 60

# One round trip for a create: count it in the seller's one-minute window and, unless that
# refuses it, book its recipient email into the seller's first hour with room to spare. With
# no create limit (ARGV[1] = 0) it books an email alone (a correction's).
# KEYS: the create window, the prefix of the hourly email windows, the first open hour.
# ARGV: creates per minute, emails per hour, the current hour (since the epoch).
# Returns {-1, seconds until the create window ends} when refused, else {hour, position}: the
# email is the position-th of that hour's budget.
_ADMIT_CREATE = """
if tonumber(ARGV[1]) > 0 then
  redis.call('set', KEYS[1], 0, 'EX', 60, 'NX')
  if redis.call('incr', KEYS[1]) > tonumber(ARGV[1]) then
    return {-1, redis.call('ttl', KEYS[1])}
  end
end
local hour = math.max(tonumber(ARGV[3]), tonumber(redis.call('get', KEYS[3]) or '0'))
local window = KEYS[2] .. hour
local position = redis.call('incr', window)
redis.call('expireat', window, (hour + 2) * 3600)
if position >= tonumber(ARGV[2]) then
  redis.call('set', KEYS[3], hour + 1)
  redis.call('expireat', KEYS[3], (hour + 2) * 3600)
end
return {hour, position}
"""
# A booked email that was not queued after all (the create was refused): its slot is freed,
# only while the window exists (a bare DECR would recreate it without a TTL).
_RETURN_EMAIL_SLOT = """
if redis.call('exists', KEYS[1]) == 1 then return redis.call('decr', KEYS[1]) end
return 0
"""


def _digest(subject: uuid.UUID) -> str:
    return hashlib.sha256(str(subject).encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class EmailSlot:
    """Where a seller's recipient email falls in its hourly budget."""

    hour: int
    # None: at once, the current hour has room. Otherwise the time it is deferred to, spread
    # over that later hour so that a backlog leaves at the allowed pace, not in one burst.
    send_at: datetime | None


class ShipmentLimits:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._creates_per_minute = settings.shipments_per_seller_per_minute
        self._emails_per_hour = settings.recipient_emails_per_seller_per_hour
        self._guesses = FixedWindowLimiter(
            redis,
            "delivery_code_guesses",
            settings.delivery_code_guesses_per_partner_per_minute,
            MINUTE,
        )

    async def admit_create(self, seller_id: uuid.UUID) -> EmailSlot:
        """Count one create against the seller's rate (429 beyond it) and book the slot of its
        "shipment created" email in the seller's hourly budget."""
        return await self._book(seller_id, self._creates_per_minute)

    async def book_recipient_email(self, seller_id: uuid.UUID) -> EmailSlot:
        """Book the slot of one more recipient email the seller's own change sends (a
        correction), in the same hourly budget as the creates' emails."""
        return await self._book(seller_id, 0)

    async def _book(self, seller_id: uuid.UUID, creates_per_minute: int) -> EmailSlot:
        """Book a recipient email's slot, counting a create first unless `creates_per_minute`
        is 0 (the script then skips the create window)."""
        digest = _digest(seller_id)
        current_hour = int(time.time()) // HOUR
        hour, position = await self._redis.eval(
            _ADMIT_CREATE,
            3,
            f"ratelimit:shipment_creates:{digest}",
            f"ratelimit:recipient_emails:{digest}:",
            f"ratelimit:recipient_emails:{digest}:open",
            creates_per_minute,
            self._emails_per_hour,
            current_hour,
        )
        if hour == -1:
            raise RateLimited(
                position,
                f"At most {self._creates_per_minute} shipments a minute per seller; "
                "retry after the number of seconds in Retry-After.",
            )
        if hour <= current_hour:
            return EmailSlot(hour, None)
        offset = (position - 1) * HOUR / self._emails_per_hour
        return EmailSlot(hour, datetime.fromtimestamp(hour * HOUR + offset, UTC))

    async def return_email_slot(self, seller_id: uuid.UUID, slot: EmailSlot) -> None:
        """Give back a booked slot whose email was never queued."""
        key = f"ratelimit:recipient_emails:{_digest(seller_id)}:{slot.hour}"
        await self._redis.eval(_RETURN_EMAIL_SLOT, 1, key)

    async def count_code_guess(self, partner_id: uuid.UUID) -> None:
        """One delivery-code guess by the partner (429 beyond its budget per minute)."""
        await self._guesses.hit(str(partner_id))

    async def forget_code_guess(self, partner_id: uuid.UUID) -> None:
        """A guess that was right: the budget is for wrong ones."""
        await self._guesses.give_back(str(partner_id))
