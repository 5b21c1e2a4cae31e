from __future__ import annotations

from backend.errors import Conflict, DomainError, Forbidden, NotFound, Unauthorized

# Seconds a client is told to wait when the password-hashing queue is full: several hashes
# finish in that time.
HASHING_RETRY_AFTER_SECONDS = 1


class EmailTaken(Conflict):
    code = "email_taken"
    title = "Email already registered"
    default_detail = "An account of this kind already uses this email address."


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    title = "Invalid credentials"
    default_detail = "The email address or password is wrong."


class InvalidToken(Unauthorized):
    code = "invalid_token"
    title = "Invalid token"
    default_detail = "The bearer token or API key is malformed, unknown, expired or revoked."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail)
        # RFC 6750 §3.1: a credential was sent and is not good; a client should not retry it.
        self.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'


class InsufficientScope(Forbidden):
    code = "insufficient_scope"
    title = "API key lacks a scope"
    default_detail = "This API key does not have the scope this operation needs."

    def __init__(self, scope: str) -> None:
        super().__init__(
            f"This API key does not have the `{scope}` scope this operation needs; create a "
            "key with it.",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
            required_scope=scope,
        )


class AccessTokenRequired(Forbidden):
    code = "access_token_required"
    title = "Access token required"
    default_detail = (
        "This operation takes an access token from a password login, not an API key: keys "
        "cannot manage keys, log out, or change the account."
    )


class TooManyApiKeys(Conflict):
    code = "too_many_keys"
    title = "Too many API keys"
    default_detail = "An account has at most 20 API keys; delete one you no longer use first."


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"
    title = "No such API key"
    default_detail = "You have no API key with this id."


class WrongAccountKind(Forbidden):
    code = "wrong_account_kind"
    title = "Wrong kind of account"
    default_detail = "This operation needs a token of another kind of account."


class InvalidLinkToken(DomainError):
    status_code = 400
    code = "invalid_link_token"
    title = "Invalid or expired link"
    default_detail = "This link is invalid, has expired or was already used; ask for a new one."


class PartnerSuspended(Forbidden):
    code = "partner_suspended"
    title = "Partner suspended"
    default_detail = (
        "This partner account is suspended: it cannot see or report shipments. "
        "GET /partner/me shows the reason; contact the Shiptrack operator."
    )


class PartnerNameLocked(Conflict):
    code = "partner_name_locked"
    title = "Name can no longer be changed"
    default_detail = (
        "Recipients see this name on their tracking pages, so after approval only the "
        "Shiptrack operator can change it. Zip codes and capacity stay editable."
    )


class PartnerNotFound(NotFound):
    code = "partner_not_found"
    title = "No such partner"
    default_detail = "No partner account has this email address."


class PasswordHashingBusy(DomainError):
    status_code = 503
    code = "password_hashing_busy"
    title = "Too many password checks at once"
    default_detail = (
        "Too many logins and password changes are waiting; retry after the number of seconds "
        "in Retry-After."
    )

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(HASHING_RETRY_AFTER_SECONDS)})


class EmailAlreadyVerified(Conflict):
    code = "email_already_verified"
    title = "Email already verified"
    default_detail = "This account's email address is already verified; nothing was sent."
