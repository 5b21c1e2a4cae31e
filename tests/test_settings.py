"""Settings: the JWT key and email backend policies in production, external services named in
pairs, and list values given as environment strings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from backend import config
from backend.config import (
    DEV_JWT_SECRET_KEY,
    MAKE_JWT_KEY_COMMAND,
    MIN_JWT_KEY_BYTES,
    HalfConfiguredServices,
    Settings,
)

# Variables that would change what these tests read if the developer's shell had them set.
_SETTINGS_VARIABLES = (
    "ENVIRONMENT",
    "JWT_SECRET_KEY",
    "CORS_ORIGINS",
    "EMAIL_BACKEND",
    "DATABASE_URL",
    "REDIS_URL",
)
DATABASE_URL = "postgresql+asyncpg://shiptrack@127.0.0.1:5432/shiptrack"
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def settings_from(**values: Any) -> Settings:
    """Settings as the process would build them, but never from a local `.env` file."""
    return Settings(_env_file=None, **values)


def test_production_refuses_the_default_development_key() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET_KEY"):
        settings_from(environment="production")


def test_production_without_a_key_says_how_to_make_one() -> None:
    with pytest.raises(ValidationError) as caught:
        settings_from(environment="production")
    message = str(caught.value)
    assert "JWT_SECRET_KEY must be set when ENVIRONMENT=production" in message
    assert 'python -c "import secrets; print(secrets.token_urlsafe(48))"' in message
    assert MAKE_JWT_KEY_COMMAND in message
    assert "ENVIRONMENT=dev" in message  # the way out on a developer's own machine


def test_a_short_key_is_refused_with_how_to_make_a_long_enough_one() -> None:
    with pytest.raises(ValidationError) as caught:
        settings_from(environment="production", jwt_secret_key="k" * (MIN_JWT_KEY_BYTES - 1))
    message = str(caught.value)
    assert f"JWT_SECRET_KEY is shorter than {MIN_JWT_KEY_BYTES} bytes" in message
    assert MAKE_JWT_KEY_COMMAND in message


def test_the_key_command_makes_a_key_production_accepts() -> None:
    # The command the error gives, run: what it prints must pass the check it was given for.
    code = MAKE_JWT_KEY_COMMAND.removeprefix('python -c "').removesuffix('"')
    printed = subprocess.run(  # noqa: S603 - our own interpreter and the command we print
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    settings = settings_from(environment="production", jwt_secret_key=printed, email_backend="smtp")
    assert settings.jwt_secret_key.get_secret_value() == printed


def test_production_refuses_the_default_key_even_when_given_explicitly() -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET_KEY"):
        settings_from(environment="production", jwt_secret_key=DEV_JWT_SECRET_KEY)


def test_production_refuses_a_key_one_byte_too_short() -> None:
    key = "k" * (MIN_JWT_KEY_BYTES - 1)
    assert len(key.encode()) == 31
    with pytest.raises(ValidationError, match="JWT_SECRET_KEY"):
        settings_from(environment="production", jwt_secret_key=key)


def test_production_accepts_a_32_byte_key() -> None:
    key = "k" * MIN_JWT_KEY_BYTES
    settings = settings_from(environment="production", jwt_secret_key=key, email_backend="smtp")
    assert settings.environment == "production"
    assert settings.jwt_secret_key.get_secret_value() == key


def test_key_length_is_counted_in_utf8_bytes_not_characters() -> None:
    # 16 characters of 2 bytes each: 32 bytes, accepted.
    accepted = settings_from(
        environment="production", jwt_secret_key="é" * 16, email_backend="smtp"
    )
    assert len(accepted.jwt_secret_key.get_secret_value().encode()) == 32
    # 16 characters but 31 bytes: refused.
    short = "é" * 15 + "a"
    assert len(short) == 16
    assert len(short.encode()) == 31
    with pytest.raises(ValidationError, match="JWT_SECRET_KEY"):
        settings_from(environment="production", jwt_secret_key=short)


def test_production_reads_its_key_policy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="JWT_SECRET_KEY"):
        settings_from()
    monkeypatch.setenv("JWT_SECRET_KEY", "p" * 48)
    monkeypatch.setenv("EMAIL_BACKEND", "smtp")
    settings = settings_from()
    assert settings.environment == "production"
    assert settings.jwt_secret_key.get_secret_value() == "p" * 48


def test_a_refused_key_is_never_printed_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A start-up failure ends up in logs; a mis-sized real key must not end up there with it.
    key = "Kq7vX2mN9pL4rT8wY1zB6cD3fG5hJ0a"
    assert len(key.encode()) == 31
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET_KEY", key)
    with pytest.raises(ValidationError) as caught:
        settings_from()
    message = str(caught.value)
    assert "JWT_SECRET_KEY" in message
    leaked = [
        key[start : start + 8] for start in range(len(key) - 7) if key[start : start + 8] in message
    ]
    assert leaked == [], f"the error message shows parts of the key: {message}"


def test_production_refuses_to_start_without_an_explicit_email_backend() -> None:
    # The default writes emails to a local folder: a deployment that forgot the setting would
    # send nothing, silently.
    with pytest.raises(ValidationError, match="EMAIL_BACKEND"):
        settings_from(environment="production", jwt_secret_key="k" * 32)


@pytest.mark.parametrize("backend", ["smtp", "file"])
def test_production_takes_an_email_backend_it_is_given(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("JWT_SECRET_KEY", "p" * 48)
    monkeypatch.setenv("EMAIL_BACKEND", backend)
    assert settings_from().email_backend == backend


@pytest.mark.parametrize("environment", ["dev", "test"])
def test_development_and_tests_default_to_the_file_backend(environment: str) -> None:
    assert settings_from(environment=environment).email_backend == "file"


def test_development_accepts_the_default_key() -> None:
    settings = settings_from(environment="dev")
    assert settings.jwt_secret_key.get_secret_value() == DEV_JWT_SECRET_KEY


def test_without_an_environment_the_published_dev_key_is_refused() -> None:
    # Forgetting ENVIRONMENT must not run a deployment on the key printed in the repository.
    with pytest.raises(ValidationError):
        settings_from()
    production = settings_from(jwt_secret_key="k" * 32, email_backend="smtp")
    assert production.environment == "production"


def test_an_unknown_environment_is_refused() -> None:
    with pytest.raises(ValidationError):
        settings_from(environment="staging")


def test_secret_key_is_hidden_from_the_settings_repr() -> None:
    key = "s" * 40
    settings = settings_from(environment="production", jwt_secret_key=key, email_backend="smtp")
    assert key not in repr(settings)
    assert key not in str(settings.model_dump())


def test_neither_url_means_embedded_services() -> None:
    assert settings_from(environment="dev").uses_embedded_services() is True


def test_both_urls_mean_external_services() -> None:
    settings = settings_from(environment="dev", database_url=DATABASE_URL, redis_url=REDIS_URL)
    assert settings.uses_embedded_services() is False


def test_a_database_url_without_a_redis_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before, this started embedded PostgreSQL and Redis and quietly used them instead.
    monkeypatch.setenv("DATABASE_URL", DATABASE_URL)
    settings = settings_from(environment="dev")
    with pytest.raises(HalfConfiguredServices) as caught:
        settings.uses_embedded_services()
    assert str(caught.value) == (
        "DATABASE_URL is set but REDIS_URL is not: set both to use your own PostgreSQL and "
        "Redis, or neither to have shiptrack start embedded ones"
    )


def test_a_redis_url_without_a_database_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    settings = settings_from(environment="dev")
    with pytest.raises(HalfConfiguredServices) as caught:
        settings.uses_embedded_services()
    assert str(caught.value) == (
        "REDIS_URL is set but DATABASE_URL is not: set both to use your own PostgreSQL and "
        "Redis, or neither to have shiptrack start embedded ones"
    )


def test_an_empty_url_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # `REDIS_URL=` in a .env copied from .env.example is "not set", not an external server.
    monkeypatch.setenv("DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("REDIS_URL", "")
    with pytest.raises(HalfConfiguredServices, match="REDIS_URL is not"):
        settings_from(environment="dev").uses_embedded_services()


def test_cors_origins_from_a_comma_separated_environment_string(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://shop.example, https://admin.example ,,")
    settings = settings_from(environment="dev")
    assert settings.cors_origins == ["https://shop.example", "https://admin.example"]


def test_cors_origins_with_a_single_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://shop.example")
    assert settings_from(environment="dev").cors_origins == ["https://shop.example"]


def test_cors_origins_empty_string_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "")
    assert settings_from(environment="dev").cors_origins == []


def test_cors_origins_default_is_empty() -> None:
    assert settings_from(environment="dev").cors_origins == []


def test_cors_origins_given_as_a_list_in_code_are_kept() -> None:
    settings = settings_from(
        environment="dev", cors_origins=["https://a.example", "https://b.example"]
    )
    assert settings.cors_origins == ["https://a.example", "https://b.example"]


def test_hash_concurrency_leaves_a_core_for_the_event_loop() -> None:
    settings = settings_from(environment="dev")
    assert settings.password_hash_concurrency == max(1, config.usable_cores() - 1)
    assert 1 <= config.usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("150000 100000", 2), ("50000 100000", 1), ("max 100000", None), ("garbage", None)],
)
def test_usable_cores_respect_a_container_cpu_quota(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpu_max: str, expected: int | None
) -> None:
    limit = tmp_path / "cpu.max"
    limit.write_text(cpu_max + "\n")
    monkeypatch.setattr(config, "CGROUP_CPU_LIMIT", limit)
    affinity = len(os.sched_getaffinity(0))
    assert config.usable_cores() == (affinity if expected is None else min(affinity, expected))


def test_retention_defaults_keep_dead_letters_and_the_feed_longer_than_sent_mail() -> None:
    settings = settings_from(environment="dev")
    assert settings.sent_outbox_retention_days == 7
    assert settings.dead_outbox_retention_days == 30
    assert settings.event_retention_days == 30
    assert settings.webhook_delivery_retention_days == 30
    assert 24 <= settings.idempotency_key_retention_hours <= 72


def test_dead_letters_are_never_kept_shorter_than_sent_messages() -> None:
    with pytest.raises(ValidationError, match="DEAD_OUTBOX_RETENTION_DAYS"):
        settings_from(
            environment="dev", sent_outbox_retention_days=10, dead_outbox_retention_days=9
        )


def test_the_delivery_log_cannot_outlive_its_events() -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_DELIVERY_RETENTION_DAYS"):
        settings_from(
            environment="dev", event_retention_days=14, webhook_delivery_retention_days=15
        )


def test_the_feed_keeps_events_as_long_as_webhooks_are_retried() -> None:
    # Webhook retries span about 28 hours and read the event at each attempt.
    with pytest.raises(ValidationError, match="event_retention_days"):
        settings_from(environment="dev", event_retention_days=1)
