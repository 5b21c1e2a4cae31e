"""Settings, read from the environment (and `.env`) once per process, never at import time."""

from __future__ import annotations

import ipaddress
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# A key that only exists so `make run` works out of the box; refused outside dev and test.
DEV_JWT_SECRET_KEY = "dev-only-insecure-key-change-me-0123456789abcdef"  # noqa: S105
MIN_JWT_KEY_BYTES = 32
MAKE_JWT_KEY_COMMAND = 'python -c "import secrets; print(secrets.token_urlsafe(48))"'

Environment = Literal["dev", "test", "production"]
PartnerApproval = Literal["manual", "auto"]
CGROUP_CPU_LIMIT = Path("/sys/fs/cgroup/cpu.max")


class HalfConfiguredServices(ValueError):
    """DATABASE_URL without REDIS_URL, or the reverse: neither embedded nor external."""


def usable_cores() -> int:
    """Cores this process may really use: its CPU affinity, capped by a cgroup v2 CPU quota.

    `os.cpu_count()` counts the host's cores, which in a container limited to one CPU would let
    several bcrypt hashes run at once and starve the event loop.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = CGROUP_CPU_LIMIT.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit visible: the affinity is the limit
    return cores


def parse_dns_server(server: str) -> tuple[str, int]:
    """(IP, port) of `IP`, `IP:port` or `[IPv6]:port`; ValueError for anything else."""
    parts = urlsplit(f"dns://{server}")
    if parts.hostname is None or parts.path or parts.query or parts.username:
        raise ValueError(f"{server!r} is not IP[:port]")
    return str(ipaddress.ip_address(parts.hostname)), parts.port or 53


class Settings(BaseSettings):
    # Empty values count as unset, so `DATABASE_URL=` in .env means "embedded".
    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        # Errors must never print the JWT key or a database password back.
        hide_input_in_errors=True,
    )

    # Production unless told otherwise: a forgotten setting must fail safe. `make` sets dev.
    environment: Environment = "production"

    # Connections. Left empty, `shiptrack serve` starts embedded PostgreSQL and Redis.
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".data")

    # Database pool and timeouts: a dead or paused server must fail a request fast, never hang it.
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    db_command_timeout_seconds: float = Field(default=10.0, gt=0)
    db_statement_timeout_ms: int = Field(default=5000, ge=100)

    redis_timeout_seconds: float = Field(default=1.0, gt=0)
    # Redis connections per process; when all are busy a command waits up to the timeout above.
    redis_max_connections: int = Field(default=100, ge=1)
    health_check_timeout_seconds: float = Field(default=1.0, gt=0)

    # Authentication.
    jwt_secret_key: SecretStr = SecretStr(DEV_JWT_SECRET_KEY)
    jwt_issuer: str = "shiptrack"
    access_token_ttl_seconds: int = Field(default=30 * 60, ge=60, le=24 * 3600)
    email_verification_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=300)
    password_reset_ttl_seconds: int = Field(default=30 * 60, ge=60, le=24 * 3600)
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)
    # Concurrent bcrypt hashes; each occupies a core, so keep one free for the event loop.
    password_hash_concurrency: int = Field(default_factory=lambda: max(1, usable_cores() - 1), ge=1)
    # Hashes that may wait for a hashing thread; beyond, logins, sign-ups and resets get 503 with
    # Retry-After at once. 16 waiting is about 4 s of bcrypt at cost 12 on one thread.
    password_hash_queue_limit: int = Field(default=16, ge=0)

    # Fixed-window rate limits on the token, sign-up and password endpoints.
    rate_limit_window_seconds: int = Field(default=60, ge=1)
    # Login attempts on one account from one client address per window...
    token_attempts_per_account_and_ip: int = Field(default=10, ge=1)
    # ...and from all addresses together: guesses from elsewhere lock the owner out only beyond
    # this higher cap. Also the per-account cap on password resets and verification links.
    token_attempts_per_account: int = Field(default=50, ge=1)
    # Per client address, each on its own budget: logins, and forgot/reset/verify requests.
    token_attempts_per_ip: int = Field(default=30, ge=1)
    signups_per_ip: int = Field(default=20, ge=1)
    # Requests per second with one API key (429 with Retry-After beyond), as payment APIs
    # allow; a key is the unit an integration is throttled by, whatever address it calls from.
    api_key_requests_per_second: int = Field(default=100, ge=1)
    # Account emails per account per day. Beyond: `forgot` still answers 202 but sends nothing
    # (it must not reveal the account); a verification resend answers 429.
    reset_emails_per_account_per_day: int = Field(default=5, ge=1)
    verification_emails_per_account_per_day: int = Field(default=5, ge=1)

    # Partners. "manual": a new partner is pending, with no shipments, until the operator
    # approves it (`shiptrack partners approve`). "auto" approves at sign-up: local development
    # and demos only, since anyone could then sign up and receive sellers' customers.
    partner_approval: PartnerApproval = "manual"
    # Days after a shipment ends during which its partner still sees the recipient's name,
    # email, phone and address line; redacted in the partner's views after that.
    partner_pii_days: int = Field(default=7, ge=0, le=365)

    # Shipments.
    default_transit_days: int = Field(default=3, ge=1, le=60)
    delivery_code_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    delivery_code_max_attempts: int = Field(default=5, ge=1, le=20)
    # How long the review link in the delivery email works.
    review_link_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=3600)

    # Abuse limits on shipments (product.md §10).
    # Wrong delivery codes per shipment across all the codes it is ever issued: past this, its
    # partner may only return it. Guesses per partner per minute (right codes are given back).
    delivery_code_max_failures_per_shipment: int = Field(default=10, ge=1, le=100)
    delivery_code_guesses_per_partner_per_minute: int = Field(default=30, ge=1)
    # Shipments a seller may create before verifying its email address (403 beyond).
    unverified_seller_shipment_limit: int = Field(default=20, ge=0)
    # Recipient emails a seller's creates send per hour; beyond, they are deferred, not dropped.
    recipient_emails_per_seller_per_hour: int = Field(default=500, ge=1)
    shipments_per_seller_per_minute: int = Field(default=120, ge=1)
    # Shipments still `placed` this long after creation are cancelled by the worker's sweep,
    # which runs this often.
    placed_expiry_hours: int = Field(default=72, ge=1)
    placed_expiry_sweep_seconds: float = Field(default=60.0, gt=0)
    # Timeline events per shipment; the last one is kept for the final status (409 beyond).
    max_events_per_shipment: int = Field(default=200, ge=10, le=10_000)
    # Failed delivery attempts before a shipment goes back to its sender by itself (§12.1).
    max_delivery_attempts: int = Field(default=3, ge=1, le=10)
    # How old a partner's scan may be when it reaches the server (a van without signal
    # uploads late), and how far ahead of the server's clock a device's clock may run.
    max_scan_age_hours: int = Field(default=72, ge=1, le=24 * 30)
    scan_clock_skew_seconds: int = Field(default=300, ge=0, le=3600)

    # Notifications: the outbox worker and email.
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    outbox_batch_size: int = Field(default=20, ge=1, le=500)
    # How long a claimed row stays a worker's unless renewed. The worker renews it every third
    # of this while the row is in hand, so this only bounds how long a dead worker's rows wait.
    outbox_lease_seconds: int = Field(default=60, ge=1)
    # Messages one worker sends at once, emails and webhooks each in a lane of its own: slow
    # webhook receivers never hold up emails. Each email slot keeps an SMTP connection open;
    # webhook slots mostly wait on receivers (2 s receivers: 64 slots give 32 webhooks/s).
    outbox_email_concurrency: int = Field(default=32, ge=1, le=500)
    outbox_webhook_concurrency: int = Field(default=64, ge=1, le=500)
    # Attempts before an email is dead-lettered; with the backoff below, 16 to 32 hours (a day
    # on average). Webhooks keep their own schedule (webhooks/webhooks.py).
    outbox_max_attempts: int = Field(default=14, ge=1)
    outbox_backoff_base_seconds: float = Field(default=30.0, gt=0)
    outbox_backoff_cap_seconds: float = Field(default=8 * 3600.0, gt=0)
    # "file" writes each message under DATA_DIR/mail (dev); "smtp" sends it. Production must
    # say which: a forgotten setting would otherwise send nothing, silently.
    email_backend: Literal["file", "smtp"] = "file"
    email_from: str = "Shiptrack <no-reply@shiptrack.local>"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # "starttls" upgrades a plain connection, "tls" connects with TLS (port 465), "none" neither.
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    # Webhooks: an endpoint failing without a break for this long is disabled.
    webhook_disable_after_seconds: int = Field(default=24 * 3600, ge=60)
    # Each webhook attempt's deadline, from the DNS lookup to the last byte read.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # The deadline of looking up a webhook's host, at registration and at each attempt.
    webhook_dns_timeout_seconds: float = Field(default=3.0, gt=0, le=30)
    # Attempts to one endpoint in flight at once in one worker, so that one slow endpoint
    # cannot take every webhook slot.
    webhook_endpoint_concurrency: int = Field(default=2, ge=1, le=100)
    # Let webhook URLs reach private, loopback and link-local addresses. Tests and local
    # development only: in production this opens the door to SSRF.
    webhooks_allow_private: bool = False
    # IP[:port] of a DNS server that webhook host lookups ask directly (UDP, no threads), e.g.
    # a resolver of your own that filters answers. Unset: the system's resolver.
    webhook_dns_server: str | None = None
    # `POST /seller/webhooks/{id}/test` calls per endpoint per minute: each makes us POST to a
    # URL of the caller's choosing.
    webhook_test_sends_per_minute: int = Field(default=5, ge=1)

    # Retention: the worker deletes, in small batches, what is older than these.
    # Sent outbox messages (their rows hold recipients' addresses), days after they were sent.
    sent_outbox_retention_days: int = Field(default=7, ge=1)
    # Dead-lettered outbox messages, days after they were written: kept at least as long as
    # sent ones, for inspection.
    dead_outbox_retention_days: int = Field(default=30, ge=1)
    # The event feed's window (GET /events), days. At least 2: a webhook retried for ~28 h
    # still needs its event. An event's delivery log goes with it.
    event_retention_days: int = Field(default=30, ge=2)
    # Webhook delivery attempts (GET /seller/webhooks/{id}/deliveries), days; at most the
    # feed's window, since an event takes its deliveries with it.
    webhook_delivery_retention_days: int = Field(default=30, ge=1)
    # Idempotency keys, hours: a retry with the same key after this creates a new shipment.
    idempotency_key_retention_hours: int = Field(default=24, ge=1)
    # How often the worker purges.
    retention_purge_seconds: float = Field(default=600.0, gt=0)

    # Live updates: a comment on idle Server-Sent Event streams this often keeps proxies from
    # closing them.
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)
    # An open stream costs memory, not a connection; these caps bound that memory. Beyond them
    # a new stream is refused before it starts: 503 when the process is full, 429 per address.
    streams_per_process: int = Field(default=10_000, ge=1)
    streams_per_client: int = Field(default=50, ge=1)
    # A stream ends after this long with a retry hint; the client resumes with Last-Event-ID.
    stream_max_lifetime_seconds: float = Field(default=3600.0, gt=0)

    # HTTP server.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    graceful_shutdown_seconds: int = Field(default=20, ge=1)
    # After SIGTERM, answer /health/ready with 503 for this long before closing the sockets, so
    # a load balancer stops routing here first. 0 stops at once (a single local process).
    shutdown_drain_seconds: float = Field(default=0.0, ge=0, le=60)
    # Proxies whose X-Forwarded-For is believed; anyone else could fake their IP past rate limits.
    forwarded_allow_ips: str = "127.0.0.1"

    # HTTP.
    cors_origins: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # The whole header block (names and values) and the number of fields; a bearer token is
    # about 400 bytes. uvicorn's default parser limits neither.
    max_header_bytes: int = Field(default=16 * 1024, ge=4096)
    max_header_count: int = Field(default=100, ge=20)
    public_base_url: str = "http://127.0.0.1:8000"
    log_format: Literal["console", "json"] | None = None
    log_level: str = "INFO"
    # The reference pages' assets, fetched from npm by `make`; when missing, the pages load the
    # same pinned files from a CDN, with Subresource Integrity (backend/reference_assets.py).
    scalar_js_path: Path = Path(__file__).parent / "static" / "scalar" / "standalone.js"
    swagger_ui_dir: Path = Path(__file__).parent / "static" / "swagger-ui"
    # Bearer token that GET /metrics requires. Unset, /metrics is not served (404): the
    # counters describe traffic, so they are never public by default.
    metrics_token: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def split_cors_origins(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("cors_origins"), str):
            raw: str = data["cors_origins"]
            data["cors_origins"] = [origin.strip() for origin in raw.split(",") if origin.strip()]
        return data

    @field_validator("webhook_dns_server")
    @classmethod
    def check_dns_server(cls, server: str | None) -> str | None:
        if server is not None:
            parse_dns_server(server)
        return server

    @model_validator(mode="after")
    def check_retention(self) -> Self:
        if self.dead_outbox_retention_days < self.sent_outbox_retention_days:
            raise ValueError(
                "DEAD_OUTBOX_RETENTION_DAYS must be at least SENT_OUTBOX_RETENTION_DAYS: "
                "dead-lettered messages are kept for inspection"
            )
        if self.webhook_delivery_retention_days > self.event_retention_days:
            raise ValueError(
                "WEBHOOK_DELIVERY_RETENTION_DAYS must be at most EVENT_RETENTION_DAYS: "
                "deleting an event deletes its delivery log"
            )
        return self

    @model_validator(mode="after")
    def refuse_weak_key_outside_dev(self) -> Self:
        if self.environment in ("dev", "test"):
            return self
        key = self.jwt_secret_key.get_secret_value()
        if key == DEV_JWT_SECRET_KEY:
            problem = f"JWT_SECRET_KEY must be set when ENVIRONMENT={self.environment}"
        elif len(key.encode()) < MIN_JWT_KEY_BYTES:
            # Never the key itself, nor its length: this message ends up in logs.
            problem = f"JWT_SECRET_KEY is shorter than {MIN_JWT_KEY_BYTES} bytes"
        else:
            return self
        raise ValueError(
            f"{problem}: make a private key with `{MAKE_JWT_KEY_COMMAND}` and set "
            "JWT_SECRET_KEY to it, the same on every process (or, on your own machine, set "
            "ENVIRONMENT=dev to use the development key)"
        )

    @model_validator(mode="after")
    def require_explicit_email_backend_in_production(self) -> Self:
        if self.environment == "production" and "email_backend" not in self.model_fields_set:
            raise ValueError(
                "EMAIL_BACKEND must be set when ENVIRONMENT=production: `smtp` to send emails "
                "(with SMTP_HOST and the other SMTP_* settings), or `file` to only write them "
                "under DATA_DIR/mail"
            )
        return self

    @property
    def effective_log_format(self) -> Literal["console", "json"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if self.environment == "dev" else "json"

    @property
    def webhook_dns_server_address(self) -> tuple[str, int] | None:
        if self.webhook_dns_server is None:
            return None
        return parse_dns_server(self.webhook_dns_server)

    def uses_embedded_services(self) -> bool:
        """True with neither DATABASE_URL nor REDIS_URL (the CLI starts its own servers), False
        with both (external servers). One alone is refused: it would otherwise start embedded
        servers beside the one that was set and quietly use them instead."""
        if (self.database_url is None) == (self.redis_url is None):
            return self.database_url is None
        given, missing = (
            ("DATABASE_URL", "REDIS_URL")
            if self.redis_url is None
            else ("REDIS_URL", "DATABASE_URL")
        )
        raise HalfConfiguredServices(
            f"{given} is set but {missing} is not: set both to use your own PostgreSQL and "
            "Redis, or neither to have shiptrack start embedded ones"
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
