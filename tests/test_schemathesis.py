"""Schemathesis against the service, with both OAuth2 schemes: no 5xx, no schema violations.

Every operation of the published OpenAPI document is exercised in-process (ASGI) through all of
schemathesis' phases: the documented examples, coverage (boundary values, missing and wrong-typed
fields, unexpected methods), randomized fuzzing, and stateful sequences that follow the links
schemathesis infers between operations (create a shipment, then read, tag, patch, cancel it).
Authenticated operations get a real bearer token from `POST /seller/token` or `POST /partner/token`
(schemathesis' dynamic token auth, picked by the operation's `security`, the seller's where an
operation takes either); after a 401, as when a fuzzed `POST .../logout` revoked the token,
schemathesis logs in again.

The generation is derandomized and bounded (examples per operation, stateful scenarios and steps,
a per-request timeout), so the same cases run on every machine; the last test prints how many
cases ran in each phase and fails when too few did, so that a silently empty run cannot pass.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.python import asgi
from schemathesis.specs.openapi.schemas import OpenApiSchema

from backend.main import create_app
from tests.conftest import make_settings
from tests.factories import PASSWORD, partner_body, seller_body

SEED = 20_260_521
# Fuzzing examples per operation. Examples and coverage cases are not bounded by it: their number
# follows from the schema (a few dozen per operation).
FUZZ_MAX_EXAMPLES = 50
STATEFUL_SCENARIOS = 50
STATEFUL_MAX_STEPS = 10
REQUEST_TIMEOUT_SECONDS = 10
# A healthy run sends about 3,400 cases (examples ~40, coverage ~1,600, fuzzing ~1,200, stateful
# ~600) in about 40 s here. Below these floors the run did not really happen (a filter matching
# nothing, auth that never worked, a phase switched off by a schemathesis upgrade); they stay
# low enough that a run stopped early by a real failure reports that failure, not a second one.
MIN_CASES = {"examples": 20, "coverage": 1000, "fuzzing": 300, "stateful": 20}
MIN_TOTAL_CASES = 2000
MIN_AUTHENTICATED_SUCCESSES = 10

# Server-Sent Event streams never end: a stream would hold the case until the request timeout.
# Their handshake and errors are covered in tests/shipments/test_live_updates.py. (/metrics,
# /docs and /scalar are not in the schema, so there is nothing to exclude for them.)
EXCLUDED_PATHS = r"/stream$"

# UUIDs drawn from Hypothesis's integers rather than `st.uuids()`, whose generator is truly random
# even under `derandomize`: the stateful phase then failed with FlakyStrategyDefinition whenever
# two of its scenarios reached a UUID parameter on the same path.
schemathesis.openapi.format(
    "uuid",
    hypothesis.strategies.integers(min_value=0, max_value=2**128 - 1).map(
        lambda number: str(uuid.UUID(int=number, version=4))
    ),
)

# The operation type is generic in schemathesis; any operation of the schema will do.
ApiCase = schemathesis.Case[Any]


@dataclass
class Tally:
    """What the schemathesis tests sent, for the report and the floors in the last test."""

    by_phase: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    # 2xx answers to requests carrying a token, by the scheme the operation asks for first.
    authenticated_successes: Counter[str] = field(default_factory=Counter)
    tests_run: set[str] = field(default_factory=set)
    started: float | None = None

    def record(self, case: ApiCase, response: schemathesis.Response) -> None:
        self.by_phase[case.meta.phase.name.value if case.meta else "unknown"] += 1
        self.by_status[response.status_code] += 1
        security = case.operation.definition.raw.get("security") or [{}]
        scheme = next(iter(security[0]), None)
        if scheme and 200 <= response.status_code < 300 and "Authorization" in case.headers:
            self.authenticated_successes[scheme] += 1


TALLY = Tally()


@pytest.fixture(scope="module")
def schemathesis_app(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    """The app as in production, less the limits a fuzzer trips on purpose.

    Its lifespan runs on schemathesis' own event loop (started by `from_asgi`, stopped here):
    the engine and Redis pool must live on the loop that serves the requests.
    """
    settings = make_settings(
        database_url,
        redis_url,
        data_dir=tmp_path_factory.mktemp("schemathesis"),
        # Thousands of sign-ups and logins from one client address in a minute.
        signups_per_ip=100_000,
        token_attempts_per_ip=100_000,
        token_attempts_per_account=100_000,
        # Fuzzed webhook URLs are then checked without resolving their random host names.
        # Nothing is ever delivered: the outbox worker does not run in this app.
        webhooks_allow_private=True,
    )
    app = create_app(settings)
    yield app
    asgi.shutdown_lifespans()


def _token_auth(kind: str, email: str) -> dict[str, Any]:
    """Dynamic token auth for one OAuth2 password scheme: log in, send `access_token` as Bearer."""
    return {
        "path": f"/{kind}/token",
        "method": "post",
        "payload": {"username": email, "password": PASSWORD},
        "payload_content_type": "application/x-www-form-urlencoded",
        "extract_selector": "/access_token",
    }


def _config(seller_email: str, partner_email: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": REQUEST_TIMEOUT_SECONDS,
            "generation": {
                "max-examples": FUZZ_MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": STATEFUL_MAX_STEPS},
            },
            "checks": {
                # The contract this test is about; every other built-in check stays on too.
                "not_a_server_error": {"enabled": True},
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
                "response_headers_conformance": {"enabled": True},
                # Off: it wants every schema-valid request accepted, but a valid-looking token,
                # cursor, event id or Idempotency-Key is still refused (400/422) when it is not
                # one the server issued, and no schema can say so.
                "positive_data_acceptance": {"enabled": False},
            },
            "auth": {
                "dynamic": {
                    "openapi": {
                        "sellerAuth": _token_auth("seller", seller_email),
                        "partnerAuth": _token_auth("partner", partner_email),
                    }
                }
            },
        }
    )


@pytest.fixture
def api_schema(
    schemathesis_app: FastAPI, clean_state: None, request: pytest.FixtureRequest
) -> OpenApiSchema:
    """The schema loaded from the app, with a seller and a partner to log in.

    Function-scoped after `clean_state`, which empties the tables before every test.

    The partner serves the zip code of the documented examples, so created shipments get one.
    """
    seller, partner = seller_body(), partner_body()
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", schemathesis_app, config=_config(seller["email"], partner["email"])
    )
    for kind, body in (("seller", seller), ("partner", partner)):
        signup = schema[f"/{kind}/signup"]["POST"].Case(body=body, media_type="application/json")
        response = signup.call()
        assert response.status_code == 201, response.text

    @schema.hook
    def after_call(
        context: schemathesis.HookContext,
        case: ApiCase,
        response: schemathesis.Response,
    ) -> None:
        TALLY.record(case, response)

    TALLY.tests_run.add(request.node.originalname)
    if TALLY.started is None:
        TALLY.started = time.monotonic()
    return schema


@pytest.fixture(autouse=True)
def _pytest_node_id_shim(request: pytest.FixtureRequest) -> None:
    # schemathesis' `from_fixture` tests rename the running node through `Node._nodeid`, which
    # pytest 9.2 no longer has (it keeps the id elsewhere): give it one to rename.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex=EXCLUDED_PATHS)


@schema.parametrize()
def test_every_operation_keeps_its_contract(case: ApiCase) -> None:
    """Examples, coverage and fuzzing phases: one subtest per operation."""
    case.call_and_validate()


def _delete_capped_rows(database_url: str) -> None:
    """Delete what a seller may only have so many of, or only once: webhook endpoints (ten, a
    URL once) and API keys (twenty)."""

    async def delete() -> None:
        connection = await asyncpg.connect(database_url.replace("+asyncpg", "", 1))
        try:
            await connection.execute("DELETE FROM webhook_endpoints")
            await connection.execute("DELETE FROM api_keys")
        finally:
            await connection.close()

    asyncio.run(delete())


def test_linked_operations_keep_their_contract(
    api_schema: OpenApiSchema, database_url: str
) -> None:
    """Stateful phase: scenarios that chain operations through the inferred links."""
    machine = api_schema.exclude(path_regex=EXCLUDED_PATHS).as_state_machine()

    class Scenario(machine):  # type: ignore[valid-type, misc]
        def setup(self) -> None:
            # Hypothesis replays the start of earlier scenarios, and a replay must get the
            # answers the first run got (else FlakyStrategyDefinition): a webhook URL or an
            # API key created then would now be 409 (`webhook_url_taken`, `too_many_keys`).
            _delete_capped_rows(database_url)

    Scenario.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_MAX_STEPS,
            derandomize=True,
            database=None,
            deadline=None,
        )
    )


def test_schemathesis_ran_enough_cases(capsys: pytest.CaptureFixture[str]) -> None:
    """Reports the generated cases; fails if a phase or an auth scheme barely ran."""
    # By name: the function schemathesis' decorator returns is called `wrapped_test`.
    expected = {
        "test_every_operation_keeps_its_contract",
        "test_linked_operations_keep_their_contract",
    }
    if not expected <= TALLY.tests_run:
        pytest.skip("the schemathesis tests did not run in this session")
    assert TALLY.started is not None
    seconds = time.monotonic() - TALLY.started
    phases = ", ".join(f"{phase} {count}" for phase, count in sorted(TALLY.by_phase.items()))
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(TALLY.by_status.items()))
    auth = ", ".join(
        f"{scheme} {count}" for scheme, count in sorted(TALLY.authenticated_successes.items())
    )
    with capsys.disabled():
        print(  # noqa: T201 - the report is what this test is for
            f"\nschemathesis {schemathesis.__version__}: {TALLY.by_phase.total()} cases in"
            f" {seconds:.0f} s ({phases}); statuses {statuses}; authenticated 2xx: {auth}"
        )
    assert TALLY.by_phase.total() >= MIN_TOTAL_CASES, TALLY.by_phase
    for phase, floor in MIN_CASES.items():
        assert TALLY.by_phase[phase] >= floor, (phase, TALLY.by_phase)
    for scheme in ("sellerAuth", "partnerAuth"):
        assert TALLY.authenticated_successes[scheme] >= MIN_AUTHENTICATED_SUCCESSES, scheme
    assert not [status for status in TALLY.by_status if status >= 500]
