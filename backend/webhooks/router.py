"""HTTP routes for webhook endpoints and the event feed."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status

from backend.accounts.api_keys.models import Scope
from backend.accounts.dependencies import (
    SellerForWebhooks,
    SellerReadingEvents,
    SettingsDep,
    authenticate,
)
from backend.accounts.models import AccountKind
from backend.accounts.tokens import NO_STORE
from backend.db import SessionDep, UnitOfWorkRoute, unit_of_work_of
from backend.errors import RateLimited, problem_responses
from backend.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, InvalidCursor
from backend.rate_limit import FixedWindowLimiter
from backend.redis_client import RedisDep
from backend.request_body import NO_REQUEST_BODY
from backend.webhooks.events import (
    SHIPMENT_CANCELLED,
    SHIPMENT_CREATED,
    SHIPMENT_DELIVERED,
    SHIPMENT_UPDATED,
    EventPublisher,
)
from backend.webhooks.schemas import (
    EventPage,
    WebhookDeliveryPage,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointList,
    WebhookEndpointRead,
    WebhookPayload,
    WebhookSecretRotation,
    WebhookTestQueued,
)
from backend.webhooks.service import (
    TooManyWebhookEndpoints,
    UnknownEvent,
    WebhookEndpointDisabled,
    WebhookEndpointNotFound,
    WebhookService,
    WebhookUrlTaken,
)
from backend.webhooks.webhooks import (
    Resolver,
    UnsafeWebhookUrl,
    check_destination,
    resolver_for,
)

webhooks_router = APIRouter(
    prefix="/seller/webhooks", tags=["Webhooks"], route_class=UnitOfWorkRoute
)
events_router = APIRouter(prefix="/events", tags=["Events"], route_class=UnitOfWorkRoute)


async def webhook_service(session: SessionDep) -> WebhookService:
    return WebhookService(session, EventPublisher(session))


WebhookServiceDep = Annotated[WebhookService, Depends(webhook_service)]


async def host_resolver(settings: SettingsDep) -> Resolver:
    """How webhook hosts are looked up; tests may override it (`app.dependency_overrides`)."""
    return resolver_for(settings)


ResolverDep = Annotated[Resolver, Depends(host_resolver)]


async def checked_registration(
    body: WebhookEndpointCreate,
    request: Request,
    settings: SettingsDep,
    resolve: ResolverDep,
) -> WebhookEndpointCreate:
    """The registration, once its URL passed the SSRF check. Declared before the seller: the
    caller is authenticated, and the connection that took given back, before the host lookup.
    A lookup can take seconds, and requests holding pooled connections through them would leave
    none for anyone else."""
    await authenticate(request, AccountKind.seller, Scope.webhooks)
    await unit_of_work_of(request).release_after_reading()
    await check_destination(
        body.url,
        allow_private=settings.webhooks_allow_private,
        resolve=resolve,
        lookup_seconds=settings.webhook_dns_timeout_seconds,
    )
    return body


CheckedRegistration = Annotated[WebhookEndpointCreate, Depends(checked_registration)]


async def webhook_test_limiter(settings: SettingsDep, redis: RedisDep) -> FixedWindowLimiter:
    return FixedWindowLimiter(redis, "webhook-test", settings.webhook_test_sends_per_minute, 60)


WebhookTestLimiter = Annotated[FixedWindowLimiter, Depends(webhook_test_limiter)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]


@webhooks_router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookEndpointCreated,
    responses=problem_responses(UnsafeWebhookUrl, TooManyWebhookEndpoints, WebhookUrlTaken),
)
async def create_webhook_endpoint(
    body: CheckedRegistration,
    seller: SellerForWebhooks,
    webhooks: WebhookServiceDep,
    response: Response,
) -> WebhookEndpointCreated:
    """Register a URL to receive your events, signed per Standard Webhooks.

    The response carries the signing `secret`, shown only this once. Each delivery has
    `webhook-id` (the event id, the same on every retry), `webhook-timestamp` and
    `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed with the bytes of
    the secret after `whsec_`. Answer 2xx within 10 s; anything else is retried with backoff
    for about a day, after which the endpoint is disabled (see `disabled_reason`).

    A URL is registered once: the same URL again is 409 `webhook_url_taken`, with the id of
    the endpoint you have (`endpoint_id`). Live and test endpoints (registered with a test
    key) are apart: each mode may have the URL once.
    """
    response.headers.update(NO_STORE)
    return await webhooks.register(seller, body)


@webhooks_router.get("", response_model=WebhookEndpointList)
async def list_webhook_endpoints(
    seller: SellerForWebhooks, webhooks: WebhookServiceDep
) -> WebhookEndpointList:
    """Your endpoints, oldest first (secrets are never shown again)."""
    return WebhookEndpointList(items=await webhooks.list_endpoints(seller))


@webhooks_router.delete(
    "/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[NO_REQUEST_BODY],
    responses=problem_responses(WebhookEndpointNotFound),
)
async def delete_webhook_endpoint(
    endpoint_id: uuid.UUID, seller: SellerForWebhooks, webhooks: WebhookServiceDep
) -> None:
    """Stop sending to this endpoint; deliveries still queued for it are dropped."""
    await webhooks.delete(seller, endpoint_id)


@webhooks_router.post(
    "/{endpoint_id}/enable",
    response_model=WebhookEndpointRead,
    dependencies=[NO_REQUEST_BODY],
    responses=problem_responses(WebhookEndpointNotFound),
)
async def enable_webhook_endpoint(
    endpoint_id: uuid.UUID, seller: SellerForWebhooks, webhooks: WebhookServiceDep
) -> WebhookEndpointRead:
    """Deliver to an endpoint again after it was disabled for failing too long (fix your
    receiver first: check it with `POST /seller/webhooks/{id}/test` afterwards).

    Its `disabled_reason` and `failing_since` are cleared, and it gets every event from now
    on. Events of the time it was disabled are **not** sent again: catch up on them with
    `GET /events?after=<the last event id you processed>`. A retry that was still scheduled
    when you enable it goes out as planned. Enabling an enabled endpoint changes nothing.
    """
    return await webhooks.enable(seller, endpoint_id)


@webhooks_router.post(
    "/{endpoint_id}/rotate-secret",
    response_model=WebhookEndpointCreated,
    responses=problem_responses(WebhookEndpointNotFound),
)
async def rotate_webhook_secret(
    endpoint_id: uuid.UUID,
    body: WebhookSecretRotation,
    seller: SellerForWebhooks,
    webhooks: WebhookServiceDep,
    response: Response,
) -> WebhookEndpointCreated:
    """Replace the endpoint's signing secret; the new `secret` is shown only this once.

    For `overlap_seconds` (default a day, at most 7 days; send `{}` for the default) every
    delivery carries two signatures, `webhook-signature: v1,<new> v1,<old>`: a receiver that
    still holds the old secret, and one that already has the new one, both accept it. Deploy
    the new secret within that time; after it only the new one signs.
    `previous_secret_expires_at` says when the old one stops. `overlap_seconds: 0` retires
    the old secret at once (a leaked secret).

    Rotating again during an overlap makes the current secret the previous one, with a new
    overlap; the secret before it stops signing at once.
    """
    response.headers.update(NO_STORE)
    return await webhooks.rotate_secret(seller, endpoint_id, body)


@webhooks_router.get(
    "/{endpoint_id}/deliveries",
    response_model=WebhookDeliveryPage,
    responses=problem_responses(WebhookEndpointNotFound, InvalidCursor),
)
async def list_webhook_deliveries(
    endpoint_id: uuid.UUID,
    seller: SellerForWebhooks,
    webhooks: WebhookServiceDep,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> WebhookDeliveryPage:
    """Every delivery attempt to this endpoint, newest first: status code, error and timing."""
    return await webhooks.deliveries(seller, endpoint_id, limit=limit, cursor=cursor)


@webhooks_router.post(
    "/{endpoint_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[NO_REQUEST_BODY],
    response_model=WebhookTestQueued,
    responses=problem_responses(WebhookEndpointNotFound, WebhookEndpointDisabled, RateLimited),
)
async def send_webhook_test(
    endpoint_id: uuid.UUID,
    seller: SellerForWebhooks,
    webhooks: WebhookServiceDep,
    limiter: WebhookTestLimiter,
) -> WebhookTestQueued:
    """Queue a `webhook.test` event to this endpoint only; watch its deliveries for the result.

    Each endpoint takes a few test sends a minute (`WEBHOOK_TEST_SENDS_PER_MINUTE`); beyond
    that the answer is 429 with `Retry-After`, and nothing is queued.
    """
    return WebhookTestQueued(event_id=await webhooks.send_test(seller, endpoint_id, limiter))


@events_router.get("", response_model=EventPage, responses=problem_responses(UnknownEvent))
async def list_events(
    seller: SellerReadingEvents,
    webhooks: WebhookServiceDep,
    after: Annotated[
        uuid.UUID | None, Query(description="The last event id you processed; omit to start.")
    ] = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
) -> EventPage:
    """Your events in the order they happened: catch up after an outage with the last id you
    saw. The ids are those of the webhook deliveries (`webhook-id`).

    Following `after`, you never miss an event: one that commits after you read a page always
    comes after that page. An event appears once every change that began before it has
    finished, normally within milliseconds of its commit (a webhook may arrive first).

    Each `shipment.*` event says what changed (`ShipmentEventData`: the shipment's id,
    tracking number, status and version, the fields this event set, and its timeline event),
    not the whole shipment: `GET /shipments/{id}` gives that.

    The feed keeps events for `EVENT_RETENTION_DAYS` (30 days by default); older ones are
    deleted, and an `after` id that is gone is answered 422 `unknown_event`: start again
    without `after` and skip the ids you already processed.
    """
    return await webhooks.feed(seller, after=after, limit=limit)


WEBHOOK_DESCRIPTIONS = {
    SHIPMENT_CREATED: "A shipment was created and assigned to a partner.",
    SHIPMENT_UPDATED: "A timeline event was added: a new status, a scan, a note or a new ETA.",
    SHIPMENT_DELIVERED: "The recipient received the shipment (sent with its shipment.updated).",
    SHIPMENT_CANCELLED: "The seller cancelled the shipment (sent with its shipment.updated).",
}
SIGNATURE_HEADERS = """
Headers: `webhook-id` (the event id, identical on every retry: deduplicate on it),
`webhook-timestamp` (Unix seconds; reject old ones), `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{raw body}">`, keyed with the
base64-decoded part of your secret after `whsec_`; while a rotated secret's overlap lasts, two
of them, space-separated: accept the delivery when one verifies). Answer 2xx within 10 seconds.

The body says what changed, not the whole shipment: `data.changes` holds only the fields this
event set, `data.version` orders events of one shipment. Fetch `GET /shipments/{id}` for the
rest (recipient, destination, tags, the whole timeline).
"""


def document_webhooks(app: FastAPI) -> None:
    """Describe the deliveries in the OpenAPI `webhooks` section, so Scalar shows them."""
    for event_type, summary in WEBHOOK_DESCRIPTIONS.items():

        async def delivery(body: WebhookPayload) -> None:  # documentation only, never routed
            """Sent to your endpoint."""

        app.webhooks.post(
            event_type,
            summary=summary,
            description=summary + SIGNATURE_HEADERS,
            tags=["Webhooks"],
            operation_id=event_type.replace(".", "_"),
        )(delivery)
