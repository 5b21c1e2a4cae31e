"""The published API reference: security derived from each route's auth dependency, problem+json
errors, examples everywhere, and a Scalar page that works offline without telemetry."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from backend.accounts.dependencies import (
    current_partner,
    current_seller,
    get_access_claims,
    seller_for_webhooks,
    seller_reading_events,
)
from backend.config import Settings
from backend.main import create_app
from backend.reference_assets import ALL_FILES, SCALAR_JS, SWAGGER_CSS, SWAGGER_JS, digest
from backend.shipments.dependencies import (
    callers_shipments,
    partners_shipments,
    sellers_reading_shipments,
    sellers_shipments,
    streaming_callers_shipments,
)
from backend.testmode.router import seller_test_key_reading, seller_test_key_writing
from tests.conftest import make_settings

PROBLEM = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
SELLER: list[dict[str, list[str]]] = [{"sellerAuth": []}]
PARTNER: list[dict[str, list[str]]] = [{"partnerAuth": []}]

Operation = tuple[str, str, dict[str, Any]]


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def _operations(spec: dict[str, Any]) -> Iterator[Operation]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def _dependency_calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _dependency_calls(sub)


Security = frozenset[tuple[str, tuple[str, ...]]]
SELLER_OR_PARTNER: Security = frozenset({("sellerAuth", ()), ("partnerAuth", ())})

# What each auth dependency must document, written out from product.md §7 and §11.1 rather than
# read from the registry the builder uses: each alternative is (scheme, scopes).
EXPECTED_SECURITY: dict[Callable[..., Any], Security] = {
    current_seller: frozenset({("sellerAuth", ())}),
    current_partner: frozenset({("partnerAuth", ())}),
    sellers_shipments: frozenset({("sellerAuth", ()), ("apiKey", ("shipments:write",))}),
    sellers_reading_shipments: frozenset({("sellerAuth", ()), ("apiKey", ("shipments:read",))}),
    partners_shipments: frozenset({("partnerAuth", ()), ("apiKey", ("shipments:write",))}),
    callers_shipments: SELLER_OR_PARTNER | {("apiKey", ("shipments:read",))},
    streaming_callers_shipments: SELLER_OR_PARTNER,
    seller_for_webhooks: frozenset({("sellerAuth", ()), ("apiKey", ("webhooks",))}),
    seller_reading_events: frozenset({("sellerAuth", ()), ("apiKey", ("events:read",))}),
    # Test mode takes test keys only.
    seller_test_key_reading: frozenset({("apiKey", ("shipments:read",))}),
    seller_test_key_writing: frozenset({("apiKey", ("shipments:write",))}),
}


def _expected_security_by_operation(app: FastAPI) -> dict[tuple[str, str], Security | None]:
    """(path, method) -> the security the route's own auth dependency calls for.

    None means: authenticated through the bearer token, but by a dependency not in
    EXPECTED_SECURITY (an "either kind" route); the caller checks it loosely.
    """
    expected: dict[tuple[str, str], Security | None] = {}
    for context in iter_route_contexts(app.routes):
        if not isinstance(context.original_route, APIRoute) or not context.include_in_schema:
            continue
        calls = list(_dependency_calls(context.dependant))
        known = [EXPECTED_SECURITY[call] for call in calls if call in EXPECTED_SECURITY]
        # A route's first auth dependency decides; any later one must agree with it.
        assert all(security == known[0] for security in known), context.path_format
        security: Security | None = known[0] if known else frozenset()
        if not known and get_access_claims in calls:
            security = None
        assert context.path_format is not None
        for method in context.methods or ():
            expected[(context.path_format, method.lower())] = security
    return expected


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref: str = schema["$ref"]
        assert ref.startswith("#/components/schemas/"), ref
        schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def _schema_has_example(spec: dict[str, Any], schema: dict[str, Any], depth: int = 0) -> bool:
    """Whether a client (or Scalar) can show a concrete value for this schema."""
    assert depth < 20, "schema recursion too deep"
    schema = _resolve(spec, schema)
    if schema.get("type") == "null" or any(
        key in schema for key in ("example", "examples", "const", "enum", "default")
    ):
        return True
    parts: list[dict[str, Any]] = []
    for combinator in ("anyOf", "oneOf", "allOf"):
        parts += schema.get(combinator, [])
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        parts.append(schema["items"])
    properties: dict[str, Any] = schema.get("properties", {})
    required: list[str] = schema.get("required", []) if properties else []
    parts += [properties[name] for name in required]
    if not parts and isinstance(schema.get("additionalProperties"), dict):
        parts.append(schema["additionalProperties"])
    if properties and not required:
        return False
    return bool(parts) and all(_schema_has_example(spec, part, depth + 1) for part in parts)


def _media_has_example(spec: dict[str, Any], media: dict[str, Any]) -> bool:
    if media.get("example") is not None or media.get("examples"):
        return True
    return "schema" in media and _schema_has_example(spec, media["schema"])


async def test_security_schemes_are_two_oauth2_password_flows_and_api_keys(
    spec: dict[str, Any], client: httpx.AsyncClient
) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert set(schemes) == {"sellerAuth", "partnerAuth", "apiKey"}
    assert schemes["apiKey"]["type"] == "http"
    assert schemes["apiKey"]["scheme"] == "bearer"
    for name, token_url in (("sellerAuth", "/seller/token"), ("partnerAuth", "/partner/token")):
        scheme = schemes[name]
        assert scheme["type"] == "oauth2"
        assert set(scheme["flows"]) == {"password"}
        assert scheme["flows"]["password"]["tokenUrl"] == token_url
        assert scheme["flows"]["password"]["scopes"] == {}
        # The token URL is a real, documented form endpoint taking username and password.
        body = spec["paths"][token_url]["post"]["requestBody"]["content"]
        form = _resolve(spec, body["application/x-www-form-urlencoded"]["schema"])
        assert {"username", "password"} <= set(form["required"])


async def test_each_operation_security_follows_its_auth_dependency(
    spec: dict[str, Any], app: FastAPI
) -> None:
    expected = _expected_security_by_operation(app)
    documented = {(path, method): op for path, method, op in _operations(spec)}
    # Every documented operation comes from a route we inspected, and the other way round.
    assert set(documented) == set(expected)

    kinds: set[str] = set()
    for key, operation in documented.items():
        schemes = expected[key]
        assert "security" in operation, key
        security = operation["security"]
        if schemes is None:
            kinds.add("either")
            assert security, key
            assert all(len(alt) == 1 for alt in security), key
            assert {name for alt in security for name in alt} <= {"sellerAuth", "partnerAuth"}
        elif not schemes:
            kinds.add("public")
            assert security == [], key
        else:
            assert all(len(alt) == 1 for alt in security), key
            documented_security = {
                (name, tuple(scopes)) for alt in security for name, scopes in alt.items()
            }
            assert documented_security == schemes, key
            assert len(security) == len(schemes), key
            kinds.add("/".join(sorted(name for name, _ in schemes)))
    # The walk is not vacuous: seller-only, partner-only, either-kind, key-taking and public.
    assert {
        "public",
        "sellerAuth",
        "partnerAuth",
        "partnerAuth/sellerAuth",
        "apiKey/sellerAuth",
        "apiKey/partnerAuth",
        "apiKey/partnerAuth/sellerAuth",
        "apiKey",
    } <= kinds


async def test_security_of_known_operations(spec: dict[str, Any]) -> None:
    """Anchors for the derived check above, from the product contract's tables."""
    paths = spec["paths"]
    assert paths["/seller/me"]["get"]["security"] == SELLER
    assert paths["/seller/logout"]["post"]["security"] == SELLER
    assert paths["/partner/me"]["get"]["security"] == PARTNER
    assert paths["/partner/me"]["patch"]["security"] == PARTNER
    assert paths["/partner/logout"]["post"]["security"] == PARTNER
    for public in ("/seller/signup", "/seller/token", "/partner/signup", "/partner/token"):
        assert paths[public]["post"]["security"] == []
    for health in ("/health/live", "/health/ready"):
        assert paths[health]["get"]["security"] == []


async def test_documented_security_matches_what_the_server_enforces(
    spec: dict[str, Any], client: httpx.AsyncClient
) -> None:
    """An operation documented as authenticated answers 401 with a Bearer challenge without one."""
    checked = 0
    for path, method, operation in _operations(spec):
        if not operation["security"]:
            continue
        concrete = path
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                concrete = concrete.replace("{" + parameter["name"] + "}", str(uuid.uuid4()))
        # An operation that takes no body refuses one (415), so send one only where documented.
        body: dict[str, object] | None = {} if "requestBody" in operation else None
        response = await client.request(method.upper(), concrete, json=body)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].lower().startswith("bearer")
        assert response.headers["content-type"].startswith(PROBLEM)
        checked += 1
    assert checked >= 5


async def test_authenticated_operations_document_401_403_503_as_problems(
    spec: dict[str, Any],
) -> None:
    authenticated = [(p, m, op) for p, m, op in _operations(spec) if op["security"]]
    assert authenticated
    for path, method, operation in authenticated:
        for status in ("401", "403", "503"):
            response = operation["responses"].get(status)
            assert response is not None, (method, path, status)
            media = response["content"][PROBLEM]
            assert media["schema"] == {"$ref": PROBLEM_REF}, (method, path, status)


async def test_operations_with_a_body_document_422_as_a_problem(spec: dict[str, Any]) -> None:
    with_body = [(p, m, op) for p, m, op in _operations(spec) if "requestBody" in op]
    assert len(with_body) >= 5
    for path, method, operation in with_body:
        response = operation["responses"].get("422")
        assert response is not None, (method, path)
        assert set(response["content"]) == {PROBLEM}, (method, path)
        media = response["content"][PROBLEM]
        assert media["schema"] == {"$ref": PROBLEM_REF}
        example = media.get("example") or next(iter(media["examples"].values()))["value"]
        assert example["code"] == "validation_failed"
        assert {"loc", "msg", "type"} == set(example["errors"][0])


def _error_responses(spec: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    for path, method, operation in _operations(spec):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                yield path, method, status, response


def _success_schemas(operation: dict[str, Any]) -> list[Any]:
    return [
        media.get("schema")
        for status, response in operation["responses"].items()
        if status.startswith("2")
        for media in response.get("content", {}).values()
    ]


async def test_every_documented_error_response_is_problem_json(spec: dict[str, Any]) -> None:
    operations = {(path, method): op for path, method, op in _operations(spec)}
    wrong: list[tuple[str, str, str, list[str]]] = []
    checked = 0
    for path, method, status, response in _error_responses(spec):
        content = response.get("content", {})
        schemas = [media.get("schema") for media in content.values()]
        # A page answers its errors with a page: the tracking page's 404 is HTML.
        if set(content) == {"text/html"}:
            continue
        # A status report (readiness: 503 with the same body as its 200) is not an error document.
        if schemas and all(
            schema is not None and schema in _success_schemas(operations[(path, method)])
            for schema in schemas
        ):
            continue
        checked += 1
        if set(content) != {PROBLEM} or content[PROBLEM].get("schema") != {"$ref": PROBLEM_REF}:
            wrong.append((method, path, status, sorted(content)))
    assert checked >= 20
    assert wrong == []


async def test_problem_schema_documents_the_rfc_9457_members(spec: dict[str, Any]) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "code", "request_id", "errors"} <= set(
        problem["properties"]
    )
    assert "HTTPValidationError" not in spec["components"]["schemas"]


async def test_every_request_body_has_an_example(spec: dict[str, Any]) -> None:
    missing = [
        (method, path, media_type)
        for path, method, operation in _operations(spec)
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items()
        if not _media_has_example(spec, media)
    ]
    assert missing == []


async def test_every_success_response_has_an_example(spec: dict[str, Any]) -> None:
    missing: list[tuple[str, str, str]] = []
    checked = 0
    for path, method, operation in _operations(spec):
        for status, response in operation["responses"].items():
            if not status.startswith("2"):
                continue
            for media in response.get("content", {}).values():
                checked += 1
                if not _media_has_example(spec, media):
                    missing.append((method, path, status))
    assert checked >= 8
    assert missing == []


async def test_every_error_response_has_an_example(spec: dict[str, Any]) -> None:
    missing = [
        (method, path, status)
        for path, method, status, response in _error_responses(spec)
        if not any(
            _media_has_example(spec, media) for media in response.get("content", {}).values()
        )
    ]
    assert missing == []


# --- Reference pages -------------------------------------------------------------------------


ReferenceApp = Callable[[Path], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def reference_app_factory(database_url: str, redis_url: str) -> ReferenceApp:
    """An app whose reference assets live in the given folder (scalar/, swagger-ui/)."""

    @asynccontextmanager
    async def start(static: Path) -> AsyncIterator[httpx.AsyncClient]:
        settings = make_settings(
            database_url,
            redis_url,
            scalar_js_path=static / "scalar" / "standalone.js",
            swagger_ui_dir=static / "swagger-ui",
        )
        application = create_app(settings)
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                yield http

    return start


def installed_assets(folder: Path) -> Path:
    """A stand-in for what `make` installs, under `folder`."""
    for file in ALL_FILES:
        (folder / file.installed_as).parent.mkdir(parents=True, exist_ok=True)
        (folder / file.installed_as).write_text(f"/* {file.path} */\n")
    return folder


def _assert_scalar_page(response: httpx.Response) -> str:
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "/openapi.json" in page
    assert '"telemetry": false' in page.replace("'", '"')
    assert '"telemetry": true' not in page.replace("'", '"')
    return page


def inline_script_hashes(page: str) -> set[str]:
    scripts = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    assert scripts
    return {f"'{digest('sha256', script.encode())}'" for script in scripts}


def assert_page_policy(response: httpx.Response, page: str) -> dict[str, str]:
    """The reference page's security headers; its inline script allowed by hash, nothing
    else inline. Returns the CSP's directives."""
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    directives = dict(
        directive.strip().split(" ", 1)
        for directive in response.headers["content-security-policy"].split(";")
    )
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["connect-src"] == "'self'"
    sources = set(directives["script-src"].split())
    assert inline_script_hashes(page) <= sources
    assert "'unsafe-inline'" not in sources
    assert "'unsafe-eval'" not in sources
    return directives


async def test_scalar_page_uses_the_bundle_this_machine_has(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.get("/scalar")
    page = _assert_scalar_page(response)
    bundle = await client.get("/scalar/standalone.js")
    assert_page_policy(response, page)
    if settings.scalar_js_path.is_file():
        assert 'src="/scalar/standalone.js"' in page
        assert "cdn.jsdelivr.net" not in page
        assert bundle.status_code == 200
        assert "javascript" in bundle.headers["content-type"]
        assert bundle.content == settings.scalar_js_path.read_bytes()
        # The CDN fallback's pinned hash is that of the very file installed from npm.
        assert digest("sha384", bundle.content) == SCALAR_JS.sri
    else:
        assert SCALAR_JS.cdn_url in page
        assert bundle.status_code == 404


async def test_scalar_serves_a_local_bundle_when_installed(
    reference_app_factory: ReferenceApp, tmp_path: Path
) -> None:
    static = installed_assets(tmp_path)
    async with reference_app_factory(static) as http:
        response = await http.get("/scalar")
        page = _assert_scalar_page(response)
        directives = assert_page_policy(response, page)
        assert 'src="/scalar/standalone.js"' in page
        assert "https://" not in page.split("<script", 1)[1].split(">", 1)[0]
        assert "https://" not in response.headers["content-security-policy"]
        assert "'self'" in directives["script-src"].split()
        bundle = await http.get("/scalar/standalone.js")
        assert bundle.status_code == 200
        assert "javascript" in bundle.headers["content-type"]
        assert bundle.content == (static / SCALAR_JS.installed_as).read_bytes()
        assert "x-request-id" in bundle.headers


async def test_scalar_falls_back_to_the_pinned_cdn_bundle_with_integrity(
    reference_app_factory: ReferenceApp, tmp_path: Path
) -> None:
    async with reference_app_factory(tmp_path / "not-installed") as http:
        response = await http.get("/scalar")
        page = _assert_scalar_page(response)
        directives = assert_page_policy(response, page)
        missing = await http.get("/scalar/standalone.js")

    assert "@1.72.1/" in SCALAR_JS.cdn_url  # a version, never a floating tag
    tag = f'<script src="{SCALAR_JS.cdn_url}" integrity="{SCALAR_JS.sri}" crossorigin="anonymous">'
    assert tag in page
    assert "/scalar/standalone.js" not in page
    # Only that file from the CDN: not the rest of the host.
    assert SCALAR_JS.cdn_url in directives["script-src"].split()
    assert "https://cdn.jsdelivr.net" not in directives["script-src"].split()
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith(PROBLEM)


async def test_servers_name_the_public_base_url(settings: Settings) -> None:
    """Code samples and generated clients call the deployment, with any prefix a proxy adds,
    and FastAPI adds no second server from the ASGI root_path."""
    public = "https://track.example.com/api"
    app = create_app(settings.model_copy(update={"public_base_url": public}))
    transport = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        served = (await http.get("/openapi.json")).json()

    assert served["servers"] == [{"url": public, "description": "This deployment"}]


async def test_the_tracking_page_is_documented_as_html(
    spec: dict[str, Any], client: httpx.AsyncClient
) -> None:
    operation = spec["paths"]["/t/{tracking_number}"]["get"]

    assert operation["security"] == []
    for status in ("200", "404"):
        assert set(operation["responses"][status]["content"]) == {"text/html"}
    missing = await client.get("/t/NOSUCHNUMBER42")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")


async def test_reference_pages_are_not_in_the_schema(spec: dict[str, Any]) -> None:
    assert not [path for path in spec["paths"] if path.startswith(("/scalar", "/docs"))]


async def test_swagger_ui_is_served_with_its_assets_and_a_policy(
    reference_app_factory: ReferenceApp, tmp_path: Path
) -> None:
    static = installed_assets(tmp_path)
    async with reference_app_factory(static) as http:
        response = await http.get("/docs")
        script = await http.get("/docs/swagger-ui-bundle.js")
        stylesheet = await http.get("/docs/swagger-ui.css")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "/openapi.json" in page
    assert 'src="/docs/swagger-ui-bundle.js"' in page
    assert 'href="/docs/swagger-ui.css"' in page
    assert "https://" not in page  # no CDN, no third-party favicon, no validator badge
    assert '"validatorUrl": null' in page
    assert "https://" not in assert_page_policy(response, page)["script-src"]
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert script.content == (static / SWAGGER_JS.installed_as).read_bytes()
    assert stylesheet.status_code == 200
    assert stylesheet.headers["content-type"].startswith("text/css")


async def test_swagger_ui_falls_back_to_pinned_cdn_files_with_integrity(
    reference_app_factory: ReferenceApp, tmp_path: Path
) -> None:
    async with reference_app_factory(tmp_path / "not-installed") as http:
        response = await http.get("/docs")
        missing = await http.get("/docs/swagger-ui-bundle.js")

    page = response.text
    directives = assert_page_policy(response, page)
    for file in (SWAGGER_JS, SWAGGER_CSS):
        assert "@5.36.0/" in file.cdn_url
        assert f'"{file.cdn_url}" integrity="{file.sri}" crossorigin="anonymous"' in page
    assert "swagger-ui-dist@5/" not in page
    assert SWAGGER_JS.cdn_url in directives["script-src"].split()
    assert SWAGGER_CSS.cdn_url in directives["style-src"].split()
    assert missing.status_code == 404


async def test_swagger_ui_uses_the_assets_this_machine_has(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    page = (await client.get("/docs")).text
    for file in (SWAGGER_JS, SWAGGER_CSS):
        installed = settings.swagger_ui_dir / Path(file.installed_as).name
        if installed.is_file():
            assert f'"/docs/{installed.name}"' in page
            # The CDN fallback's pinned hash is that of the very file installed from npm.
            assert digest("sha384", installed.read_bytes()) == file.sri
        else:
            assert f'"{file.cdn_url}" integrity="{file.sri}"' in page


async def test_the_root_leads_to_the_reference(
    client: httpx.AsyncClient, spec: dict[str, Any]
) -> None:
    response = await client.get("/", follow_redirects=False)

    assert response.status_code == 307
    assert response.headers["location"] == "/scalar"
    _assert_scalar_page(await client.get(response.headers["location"]))
    # A page for people, not an operation for integrators.
    assert "/" not in spec["paths"]
