"""The API reference pages: Scalar at /scalar and Swagger UI at /docs, with their assets; the
service's root (/) leads to Scalar.

Both pages are the same for every request, so each is rendered once, with a
Content-Security-Policy that allows its own inline script by hash and nothing else inline. Their
assets are served from this service when `make` installed them (backend/reference_assets.py),
otherwise loaded from a CDN at the pinned version with Subresource Integrity.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.openapi.docs import get_swagger_ui_html, swagger_ui_default_parameters
from fastapi.responses import FileResponse, RedirectResponse
from scalar_fastapi import AgentScalarConfig, get_scalar_api_reference

from backend.config import Settings
from backend.pages import html_security_headers
from backend.reference_assets import SCALAR_JS, SWAGGER_CSS, SWAGGER_JS, NpmFile, digest

# A parcel-brown square with a white "S": inline, so the reference asks no other host for it.
FAVICON_DATA_URL = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E"
    "%3Crect width='32' height='32' rx='6' fill='%238a5a2b'/%3E%3Ctext x='16' y='23' "
    "font-family='sans-serif' font-size='20' font-weight='700' text-anchor='middle' "
    "fill='white'%3ES%3C/text%3E%3C/svg%3E"
)
# This API's OAuth2 password flows take a username and a password, nothing else; Scalar's form
# for such a flow also offers a client id and secret, where to send them, and scopes, none of
# which applies here. Hidden by what Scalar puts in those rows (the client id's placeholder, the
# client secret's, the row after it, the scopes' disclosure), so that the box shows only what
# works; tests/browser/test_scalar.py checks that it still does with each Scalar version.
# `!important`: Scalar's own utility classes (`display: contents` on these rows) are scoped to
# its app and would win on specificity.
_AUTH_BOX_CSS = """
tr:has([data-placeholder="12345"]),
tr:has(input[placeholder="XYZ123"]),
tr:has(input[placeholder="XYZ123"]) + tr,
tr:has([class*="scopes-accordion"]) { display: none !important; }
"""
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_CACHED_ASSET = {"Cache-Control": "public, max-age=3600"}


class ReferencePage:
    """A page rendered once, with the headers it is always sent with."""

    def __init__(self, html: str, *, script_sources: str, style_sources: str) -> None:
        inline = " ".join(f"'{digest('sha256', s.encode())}'" for s in _INLINE_SCRIPT.findall(html))
        csp = (
            f"default-src 'none'; script-src {script_sources} {inline}; "
            # Both renderers set styles at run time; style-src cannot be narrowed further.
            f"style-src {style_sources} 'unsafe-inline'; img-src 'self' data:; "
            "font-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'"
        )
        self.body = html.encode()
        self.headers = html_security_headers(csp)

    def response(self) -> Response:
        return Response(self.body, media_type="text/html", headers=self.headers)


def _with_integrity(html: str, file: NpmFile) -> str:
    """The page with the CDN file's tag carrying its pinned hash: a CDN serving anything else
    (another version, a compromised file) is refused by the browser."""
    attribute = "src" if file.path.endswith(".js") else "href"
    tag = f'{attribute}="{file.cdn_url}"'
    if tag not in html:
        raise RuntimeError(f"{file.cdn_url} is not on the page to pin")
    return html.replace(tag, f'{tag} integrity="{file.sri}" crossorigin="anonymous"')


def add_reference_pages(app: FastAPI, settings: Settings) -> None:
    _add_scalar(app, settings.scalar_js_path)
    _add_swagger_ui(app, settings.swagger_ui_dir)

    # Whoever opens the bare address (a newcomer, an integrator) finds the reference. Temporary
    # (307), so browsers do not remember it should the root ever serve something else.
    @app.get("/", include_in_schema=False)
    async def go_to_reference() -> RedirectResponse:
        return RedirectResponse("/scalar", status_code=307)


def _add_scalar(app: FastAPI, bundle: Path) -> None:
    local = bundle.is_file()
    rendered = get_scalar_api_reference(
        openapi_url=app.openapi_url,
        title="Shiptrack API reference",
        scalar_js_url="/scalar/standalone.js" if local else SCALAR_JS.cdn_url,
        telemetry=False,
        persist_auth=False,
        with_default_fonts=False,
        # Nothing leaves the page: the default favicon lives on a third-party site, and the
        # hosted AI agent and developer toolbar serve no one reading a self-hosted reference.
        scalar_favicon_url=FAVICON_DATA_URL,
        agent=AgentScalarConfig(disabled=True),
        show_developer_tools="never",
        custom_css=_AUTH_BOX_CSS,
    ).body
    html = bytes(rendered).decode()
    if not local:
        html = _with_integrity(html, SCALAR_JS)
    page = ReferencePage(
        html,
        script_sources="'self'" if local else SCALAR_JS.cdn_url,
        style_sources="'self'",
    )

    @app.get("/scalar", include_in_schema=False)
    async def scalar_reference() -> Response:
        return page.response()

    if local:

        @app.get("/scalar/standalone.js", include_in_schema=False)
        async def scalar_bundle() -> FileResponse:
            return FileResponse(bundle, media_type="text/javascript", headers=_CACHED_ASSET)


def _add_swagger_ui(app: FastAPI, folder: Path) -> None:
    script, stylesheet = folder / "swagger-ui-bundle.js", folder / "swagger-ui.css"
    local = script.is_file() and stylesheet.is_file()
    rendered = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title="Shiptrack API reference (Swagger UI)",
        swagger_js_url="/docs/swagger-ui-bundle.js" if local else SWAGGER_JS.cdn_url,
        swagger_css_url="/docs/swagger-ui.css" if local else SWAGGER_CSS.cdn_url,
        swagger_favicon_url=FAVICON_DATA_URL,
        # No validator badge: it would send the schema's URL to validator.swagger.io.
        swagger_ui_parameters={**swagger_ui_default_parameters, "validatorUrl": None},
    ).body
    html = bytes(rendered).decode()
    if not local:
        html = _with_integrity(_with_integrity(html, SWAGGER_JS), SWAGGER_CSS)
    page = ReferencePage(
        html,
        script_sources="'self'" if local else SWAGGER_JS.cdn_url,
        style_sources="'self'" if local else SWAGGER_CSS.cdn_url,
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> Response:
        return page.response()

    if local:

        @app.get("/docs/swagger-ui-bundle.js", include_in_schema=False)
        async def swagger_ui_script() -> FileResponse:
            return FileResponse(script, media_type="text/javascript", headers=_CACHED_ASSET)

        @app.get("/docs/swagger-ui.css", include_in_schema=False)
        async def swagger_ui_stylesheet() -> FileResponse:
            return FileResponse(stylesheet, media_type="text/css", headers=_CACHED_ASSET)
