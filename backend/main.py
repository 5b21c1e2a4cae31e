"""The application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from backend.accounts.api_keys.usage import KeyUsage
from backend.accounts.passwords import PasswordHasher
from backend.accounts.router import partner_router, seller_router
from backend.accounts.tokens import LinkTokens, TokenCodec
from backend.accounts.tools import AccountTools
from backend.config import Settings, get_settings
from backend.context import AppContext
from backend.db import create_engine, create_sessionmaker
from backend.error_handlers import install_error_handlers
from backend.health.readiness import ReadinessProbe
from backend.health.router import router as health_router
from backend.logging_setup import configure_logging
from backend.middleware import RequestContextMiddleware, RequestLimitsMiddleware
from backend.openapi import build_openapi, operation_id
from backend.redis_client import create_redis
from backend.reference import add_reference_pages
from backend.shipments.delivery_codes import DeliveryCodes
from backend.shipments.limits import ShipmentLimits
from backend.shipments.router import coverage_router, scans_router
from backend.shipments.router import router as shipments_router
from backend.shipments.status import STATUS_MACHINE_DOC
from backend.shipments.stream_hub import StreamHub
from backend.shipments.tools import ShipmentTools
from backend.shipments.tracking_router import assets_router as tracking_assets_router
from backend.shipments.tracking_router import router as tracking_router
from backend.testmode.router import router as test_mode_router
from backend.webhooks.router import document_webhooks, events_router, webhooks_router
from backend.worker import OutboxWorker

DESCRIPTION = """
Shiptrack tracks shipments from the seller's door to the recipient's.

* **Sellers** sign up, log in (`POST /seller/token`) and create shipments.
* **Delivery partners** sign up with the zip codes they serve and report every step.
* **Recipients** follow a parcel on its public tracking page.

Authenticate with **Authorize**: pick `sellerAuth` or `partnerAuth` and log in with an email and
password, or pick `apiKey` and paste an API key (`POST /seller/api-keys`; a `st_test_` key works
on test data only: see **Test mode**). Every error is `application/problem+json` with a stable
`code` and the `request_id`.
"""


# The reference lists the sections in this order, whatever order the routers are matched in.
OPENAPI_TAGS = [
    {"name": "Operations", "description": "Health checks for load balancers and orchestrators."},
    {"name": "Sellers", "description": "Seller accounts: sign up, log in, log out, profile."},
    {"name": "Partners", "description": "Delivery partner accounts and their capacity."},
    {"name": "Shipments", "description": "Create, list and follow shipments; report each step."},
    {"name": "Public tracking", "description": "What recipients see, with a tracking number."},
    {"name": "Webhooks", "description": "Signed notifications of your shipments' events."},
    {"name": "Events", "description": "The feed of your events, to catch up after an outage."},
    {
        "name": "Test mode",
        "description": "With a test API key (`st_test_…`): test shipments carried by your "
        "simulated partner, driven through scenarios; their emails recorded, never sent.",
    },
]


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings, *, run_worker: bool) -> AsyncIterator[None]:
    """Builds the app's one context (`app.state.context`), and closes what it opened."""
    if settings.database_url is None or settings.redis_url is None:
        raise RuntimeError(
            "DATABASE_URL and REDIS_URL must be set; `shiptrack serve` starts embedded ones"
        )
    async with AsyncExitStack() as stack:  # closes, last opened first, even a partial start
        engine = create_engine(settings, settings.database_url)
        stack.push_async_callback(engine.dispose)
        redis = create_redis(settings, settings.redis_url)
        stack.push_async_callback(redis.aclose)
        context = AppContext(settings, engine, create_sessionmaker(engine), redis)
        password_hasher = PasswordHasher(
            settings.bcrypt_rounds,
            settings.password_hash_concurrency,
            settings.password_hash_queue_limit,
        )
        stack.callback(password_hasher.close)
        key_usage = KeyUsage(context.sessionmaker)
        stack.push_async_callback(key_usage.drain)
        context.provide(
            AccountTools(TokenCodec(settings), LinkTokens(settings), password_hasher, key_usage)
        )
        # Live-update streams follow Redis on a connection of their own, never this client's pool.
        stream_hub = StreamHub(settings, settings.redis_url)
        await stream_hub.start(wait_seconds=settings.redis_timeout_seconds)
        stack.push_async_callback(stream_hub.stop)
        delivery_codes = DeliveryCodes(
            settings.jwt_secret_key.get_secret_value(),
            ttl_seconds=settings.delivery_code_ttl_seconds,
            max_attempts=settings.delivery_code_max_attempts,
            max_failures_per_shipment=settings.delivery_code_max_failures_per_shipment,
        )
        context.provide(ShipmentTools(delivery_codes, ShipmentLimits(redis, settings), stream_hub))
        # Holds no connection between checks: nothing to open now or to close at shutdown.
        context.provide(ReadinessProbe(settings))
        await password_hasher.warm_up()
        app.state.context = context
        if run_worker:
            worker = OutboxWorker(settings, context.sessionmaker)
            worker_task = asyncio.create_task(worker.run(), name="outbox-worker")

            async def stop_worker() -> None:
                worker.stop()
                await worker_task

            stack.push_async_callback(stop_worker)
        yield


def create_app(settings: Settings | None = None, *, run_worker: bool = False) -> FastAPI:
    """The API. With `run_worker`, the outbox worker runs in the same process (embedded mode)."""
    settings = settings or get_settings()
    configure_logging(settings.effective_log_format, settings.log_level)

    # The lifespan gets the settings from here, not from `app.state`: the context it builds is
    # the one thing the app keeps there.
    def run_lifespan(app: FastAPI) -> AbstractAsyncContextManager[None]:
        return lifespan(app, settings, run_worker=run_worker)

    app = FastAPI(
        title="Shiptrack API",
        version="0.1.0",
        summary="Shipment tracking for sellers, delivery partners and recipients.",
        description=DESCRIPTION + STATUS_MACHINE_DOC,
        lifespan=run_lifespan,
        # Swagger UI is served by backend/reference.py, with local assets and a CSP.
        docs_url=None,
        redoc_url=None,
        openapi_tags=OPENAPI_TAGS,
        # Where clients reach this deployment, for the reference's code samples and generated
        # clients. PUBLIC_BASE_URL already holds any path prefix a proxy adds, so FastAPI must
        # not add the ASGI root_path as a second server.
        servers=[{"url": settings.public_base_url, "description": "This deployment"}],
        root_path_in_servers=False,
        # Operation ids are the handlers' names (`create_shipment`), which generated clients
        # turn into their function names; routes built once per account kind name their own.
        generate_unique_id_function=operation_id,
    )
    install_error_handlers(app)

    # Added innermost first: the request context wraps everything, so even a 413 has an id.
    app.add_middleware(
        RequestLimitsMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        max_header_count=settings.max_header_count,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-Match",
                "X-Request-ID",
            ],
            expose_headers=["X-Request-ID", "X-Process-Time", "Retry-After", "ETag"],
        )
    app.add_middleware(RequestContextMiddleware)

    # A request is matched against the routers in this order, route by route: the busiest first.
    app.include_router(shipments_router)
    app.include_router(coverage_router)
    app.include_router(scans_router)
    app.include_router(tracking_router)
    app.include_router(health_router)
    app.include_router(seller_router)
    app.include_router(partner_router)
    app.include_router(webhooks_router)
    app.include_router(events_router)
    app.include_router(test_mode_router)
    app.include_router(tracking_assets_router)
    document_webhooks(app)
    add_reference_pages(app, settings)

    def openapi() -> dict[str, Any]:
        return build_openapi(app)

    app.openapi = openapi  # type: ignore[method-assign]
    return app
