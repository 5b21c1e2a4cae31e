"""The recipient's 6-digit delivery code: issued on every entry into `out_for_delivery`,
stored only as a keyed hash, and burned after too many wrong tries or once used.

Wrong tries are also counted per shipment across all its codes: a new round out for delivery
issues a fresh code, but not a fresh budget of guesses. Past that cap the shipment is locked: it
gets no new code and can only be returned.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from backend.db import utcnow
from backend.shipments.errors import (
    DeliveryLocked,
    InvalidVerificationCode,
    VerificationCodeBurned,
    VerificationCodeRequired,
)
from backend.shipments.models import Shipment


class DeliveryCodes:
    def __init__(
        self, secret: str, ttl_seconds: int, max_attempts: int, max_failures_per_shipment: int
    ) -> None:
        # A key of its own, derived from the app secret, so these hashes mean nothing elsewhere.
        self._key = hmac.new(secret.encode(), b"shiptrack delivery code", hashlib.sha256).digest()
        self._ttl = timedelta(seconds=ttl_seconds)
        self._max_attempts = max_attempts
        self._max_failures = max_failures_per_shipment

    def _digest(self, shipment: Shipment, code: str) -> str:
        message = f"{shipment.id}:{code}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def locked(self, shipment: Shipment) -> bool:
        """Whether the shipment had so many wrong codes that it can no longer be delivered."""
        return shipment.delivery_code_failures >= self._max_failures

    @staticmethod
    def usable(shipment: Shipment) -> bool:
        """Whether the shipment holds a code that has not expired or been burned."""
        expires_at = shipment.delivery_code_expires_at
        return (
            shipment.delivery_code_hash is not None
            and expires_at is not None
            and (expires_at > utcnow())
        )

    def issue(self, shipment: Shipment) -> tuple[str, datetime]:
        """A fresh code for the shipment (replacing any earlier one) and when it expires."""
        if self.locked(shipment):
            raise DeliveryLocked()
        code = f"{secrets.randbelow(10**6):06d}"
        shipment.delivery_code_hash = self._digest(shipment, code)
        shipment.delivery_code_expires_at = utcnow() + self._ttl
        shipment.delivery_code_attempts = 0
        return code, shipment.delivery_code_expires_at

    def redeem(self, shipment: Shipment, code: str | None) -> None:
        """Accept the code (which burns it) or raise; a wrong try is recorded on the shipment."""
        if self.locked(shipment):
            raise DeliveryLocked()
        if code is None:
            raise VerificationCodeRequired()
        if shipment.delivery_code_hash is None:
            raise VerificationCodeBurned()
        expires_at = shipment.delivery_code_expires_at
        if expires_at is None or expires_at <= utcnow():
            raise InvalidVerificationCode("The verification code has expired.")
        if hmac.compare_digest(shipment.delivery_code_hash, self._digest(shipment, code)):
            self._burn(shipment)
            return
        shipment.delivery_code_attempts += 1
        shipment.delivery_code_failures += 1
        if self.locked(shipment):
            self._burn(shipment)
            raise DeliveryLocked()
        if shipment.delivery_code_attempts >= self._max_attempts:
            self._burn(shipment)
            raise VerificationCodeBurned()
        remaining = min(
            self._max_attempts - shipment.delivery_code_attempts,
            self._max_failures - shipment.delivery_code_failures,
        )
        raise InvalidVerificationCode(f"Wrong verification code; {remaining} tries left.")

    @staticmethod
    def _burn(shipment: Shipment) -> None:
        shipment.delivery_code_hash = None
        shipment.delivery_code_expires_at = None
