from __future__ import annotations

from backend.errors import Conflict, DomainError, Forbidden, NotFound, RateLimited


class ShipmentNotFound(NotFound):
    code = "shipment_not_found"
    title = "Shipment not found"
    default_detail = "No shipment with this id is visible to this account."


class TrackingNumberNotFound(NotFound):
    code = "tracking_number_not_found"
    title = "Unknown tracking number"
    default_detail = "No shipment has this tracking number."


class NoPartnerAvailable(Conflict):
    code = "no_partner_available"
    title = "No delivery partner available"
    default_detail = (
        "No delivery partner can take a shipment to this zip code now: `reason` says whether "
        "none serves it (`zip_not_served`) or all that do are full (`partners_full`). "
        "GET /coverage?zip_code= tells before a create."
    )

    @classmethod
    def because(cls, zip_code: str, *, served: bool) -> NoPartnerAvailable:
        if served:
            return cls(
                f"Every delivery partner serving {zip_code} is at capacity right now; retry "
                f"later. GET /coverage?zip_code={zip_code} says when one has room.",
                reason="partners_full",
            )
        return cls(
            f"No delivery partner serves {zip_code} yet. GET /coverage?zip_code= tells which "
            "zip codes are served before you create a shipment.",
            reason="zip_not_served",
        )


class InvalidTransition(Conflict):
    code = "invalid_transition"
    title = "Invalid status transition"
    default_detail = "The shipment cannot move to this status from its current one."


class VersionMismatch(DomainError):
    status_code = 412
    code = "version_mismatch"
    title = "Precondition failed"
    default_detail = "The shipment changed since the version given in If-Match."


class IdempotencyKeyReused(DomainError):
    status_code = 422
    code = "idempotency_key_reused"
    title = "Idempotency key reused"
    default_detail = "This Idempotency-Key was already used with a different request body."


class VerificationCodeRequired(DomainError):
    status_code = 422
    code = "verification_code_required"
    title = "Verification code required"
    default_detail = "Delivering needs the 6-digit code the recipient received."


class InvalidVerificationCode(DomainError):
    status_code = 422
    code = "invalid_verification_code"
    title = "Invalid verification code"
    default_detail = "The verification code is wrong or has expired."
    # The failed try is counted in the same transaction and must be kept.
    keep_changes = True


class VerificationCodeBurned(RateLimited):
    code = "verification_code_burned"
    title = "Verification code burned"
    default_detail = (
        "Too many wrong codes: this code no longer works. A new one is issued the next time "
        "the shipment goes out for delivery."
    )
    keep_changes = True

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(retry_after_seconds=3600, detail=detail)


class DeliveryLocked(Conflict):
    code = "delivery_locked"
    title = "Delivery locked"
    default_detail = (
        "Too many wrong delivery codes for this shipment: it can no longer be delivered, only "
        "returned to the sender."
    )
    # The wrong try that reaches the cap is counted in the same transaction and must be kept.
    keep_changes = True

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, allowed_next=["returned"])


class TimelineFull(Conflict):
    code = "timeline_full"
    title = "Timeline full"
    default_detail = (
        "This shipment's timeline holds as many events as it may; only a final status "
        "(delivered, returned, cancelled) can still be recorded."
    )


class EmailNotVerified(Forbidden):
    code = "email_not_verified"
    title = "Email not verified"
    default_detail = (
        "Verify your email address to create more shipments: follow the link in the email "
        "sent at sign-up."
    )


class ShipmentNotDelivered(Conflict):
    code = "shipment_not_delivered"
    title = "Not delivered yet"
    default_detail = "A shipment can be reviewed once it has been delivered."


class ReviewAlreadyGiven(Conflict):
    code = "review_already_given"
    title = "Already reviewed"
    default_detail = "This shipment has been reviewed already; a review cannot be changed."


class InvalidEventTime(DomainError):
    status_code = 422
    code = "invalid_occurred_at"
    title = "Invalid event time"
    default_detail = (
        "`occurred_at` must lie between the shipment's creation and now (plus a few minutes "
        "of clock skew), and be at most MAX_SCAN_AGE_HOURS old."
    )


class FailureReasonRequired(DomainError):
    status_code = 422
    code = "failure_reason_required"
    title = "Failure reason required"
    default_detail = (
        "Moving an out-for-delivery shipment back to in_transit reports a failed delivery "
        "attempt: send its `failure_reason`."
    )


class FailureReasonNotAllowed(DomainError):
    status_code = 422
    code = "failure_reason_not_allowed"
    title = "Failure reason not allowed here"
    default_detail = (
        "A `failure_reason` reports a failed delivery attempt of an out-for-delivery shipment: "
        "with status in_transit (another attempt follows), or returned for refused and "
        "address_not_found."
    )


class DetailsLocked(Conflict):
    code = "delivery_details_locked"
    title = "Delivery details can no longer change"
    default_detail = (
        "Delivery details can be corrected while the shipment is placed or in transit; once "
        "it is out for delivery, or final, they stay as they are."
    )
