"""The accounts' long-lived services, built once by the lifespan (backend/main.py) and read from
the application context (`context.part(AccountTools)`) by the dependencies that need them."""

from __future__ import annotations

from dataclasses import dataclass

from backend.accounts.api_keys.usage import KeyUsage
from backend.accounts.passwords import PasswordHasher
from backend.accounts.tokens import LinkTokens, TokenCodec


@dataclass(frozen=True, slots=True)
class AccountTools:
    # Access tokens: issued at login, checked on every authenticated request.
    token_codec: TokenCodec
    # Email verification, password reset and the recipients' tracking links.
    link_tokens: LinkTokens
    password_hasher: PasswordHasher
    # When API keys were last used, recorded beside the requests.
    key_usage: KeyUsage
