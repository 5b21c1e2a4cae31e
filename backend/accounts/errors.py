from __future__ import annotations

from backend.errors import Conflict, DomainError, Forbidden, Unauthorized


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
    default_detail = "The bearer token is missing, malformed, expired or revoked."


class WrongAccountKind(Forbidden):
    code = "wrong_account_kind"
    title = "Wrong kind of account"
    default_detail = "This operation needs a token of another kind of account."


class InvalidLinkToken(DomainError):
    status_code = 400
    code = "invalid_link_token"
    title = "Invalid or expired link"
    default_detail = "This link is invalid, has expired or was already used; ask for a new one."
