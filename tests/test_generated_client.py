"""A typed client generated from the served /openapi.json works as is (product.md §11): an
integration written with it against a real server, from sign-up to a verified test webhook.

The client is generated in the test with openapi-python-client (a maintained generator from
PyPI), never committed, so it always matches the document the server publishes now.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from backend.config import Settings
from backend.main import create_app
from tests.servers import serving_built
from tests.webhooks.receiver import Receiver, running_receiver

PACKAGE = "shiptrack_generated_client"
GENERATOR = Path(sys.executable).parent / "openapi-python-client"
# Generation is quick; this only stops a stuck generator from holding the suite.
GENERATION_TIMEOUT_SECONDS = 120


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[str]:
    """A real server on loopback that knows its address, with its outbox worker, whose
    webhooks may reach the loopback receiver."""

    def build(base_url: str) -> Any:
        served = settings.model_copy(
            update={"public_base_url": base_url, "webhooks_allow_private": True}
        )
        return create_app(served, run_worker=True)

    async with serving_built(build) as base_url:
        yield base_url


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


async def generate(document: bytes, folder: Path) -> None:
    spec = folder / "openapi.json"
    spec.write_bytes(document)
    config = folder / "generator.yml"
    config.write_text("post_hooks: []\n")  # no formatter run: the code is only imported
    process = await asyncio.create_subprocess_exec(
        str(GENERATOR),
        "generate",
        "--path",
        str(spec),
        "--output-path",
        str(folder / PACKAGE),
        "--meta",
        "none",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(GENERATION_TIMEOUT_SECONDS):
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    # A warning means part of the document could not be turned into code.
    assert b"Warning" not in output, output.decode()


@pytest.fixture
def importable(tmp_path: Path) -> Iterator[Path]:
    """A folder the generated package is imported from, forgotten afterwards."""
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
        del sys.modules[name]


def module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_a_generated_client_runs_an_integration_as_is(
    server: str, receiver: Receiver, importable: Path
) -> None:
    async with httpx.AsyncClient() as http:
        document = await http.get(f"{server}/openapi.json")
    assert document.json()["servers"][0]["url"] == server
    await generate(document.content, importable)

    client = module("client")
    models = module("models")
    api = "api"
    anonymous = client.Client(base_url=server)
    email = f"integrator-{uuid.uuid4().hex[:8]}@example.com"
    password = "integration password"

    # A seller signs up and logs in: the only password use. Everything after runs on a key.
    signup = module(f"{api}.sellers.sign_up_seller")
    seller = await signup.asyncio(
        client=anonymous,
        body=models.SellerCreate(
            name="Integrator", email=email, password=password, zip_code="02139"
        ),
    )
    assert isinstance(seller, models.SellerRead), seller
    login = module(f"{api}.sellers.seller_token")
    token = await login.asyncio(
        client=anonymous, body=models.TokenForm(username=email, password=password)
    )
    assert isinstance(token, models.TokenResponse), token
    logged_in = client.AuthenticatedClient(base_url=server, token=token.access_token)
    create_key = module(f"{api}.sellers.seller_create_api_key")
    key = await create_key.asyncio(
        client=logged_in,
        body=models.ApiKeyCreate(
            name="Warehouse sync",
            scopes=[
                models.Scope(scope)
                for scope in ("shipments:read", "shipments:write", "webhooks", "events:read")
            ],
            mode=models.KeyMode("test"),
        ),
    )
    assert isinstance(key, models.ApiKeyCreated), key
    assert key.secret.startswith("st_test_")

    integration = client.AuthenticatedClient(base_url=server, token=key.secret)
    register = module(f"{api}.webhooks.create_webhook_endpoint")
    endpoint = await register.asyncio(
        client=integration, body=models.WebhookEndpointCreate(url=receiver.url("/orders"))
    )
    assert isinstance(endpoint, models.WebhookEndpointCreated), endpoint
    receiver.secrets.setdefault("/orders", []).append(endpoint.secret)

    create = module(f"{api}.shipments.create_shipment")
    shipment = await create.asyncio(
        client=integration,
        body=models.ShipmentCreate(
            content="2 paperback books",
            weight_kg=0.8,
            destination=models.DestinationIn(zip_code="02139"),
            recipient=models.RecipientIn(name="Grace Hopper", email="grace@example.com"),
        ),
    )
    assert isinstance(shipment, models.ShipmentRead), shipment
    assert shipment.livemode is False

    advance = module(f"{api}.test_mode.advance_test_shipment")
    delivered = await advance.asyncio(
        shipment.id,
        client=integration,
        body=models.AdvanceRequest(
            to=models.ShipmentStatus("delivered"), scenario=models.Scenario("delivered")
        ),
    )
    assert isinstance(delivered, models.ShipmentRead), delivered
    assert [event.status.value for event in delivered.timeline] == [
        "placed",
        "in_transit",
        "out_for_delivery",
        "delivered",
    ]

    # created, three updates, delivered: the feed shows each once every older transaction on
    # the server has ended (at once, unless another database's holds it back a moment).
    list_events = module(f"{api}.events.list_events")
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        feed = await list_events.asyncio(client=integration)
        assert isinstance(feed, models.EventPage), feed
        if len(feed.items) >= 5 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    types = [event.type_ for event in feed.items]
    assert types[0] == "shipment.created"
    assert types.count("shipment.updated") == 3
    assert "shipment.delivered" in types

    # The worker delivers the same events, signed with the endpoint's secret.
    await receiver.wait_for_request("/orders", count=len(types))
    verifier = Webhook(endpoint.secret)
    received = receiver.received_at("/orders")
    for request in received:
        payload = verifier.verify(request.body, request.headers)
        assert payload["livemode"] is False
        assert payload["data"]["shipment_id"] == str(shipment.id)
    assert sorted(request.headers["webhook-id"] for request in received) == sorted(
        str(event.id) for event in feed.items
    )
