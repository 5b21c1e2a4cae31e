"""Server-rendered pages share one layout (backend/templates/base.html) and no external assets."""

from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates

SHARED_TEMPLATES = Path(__file__).parent / "templates"

# Only our own scripts, served as files (an injected inline script would not run); the layout's
# inline styles; requests to this origin only.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def html_security_headers(csp: str) -> dict[str, str]:
    """Headers for an HTML page: its Content-Security-Policy, never framed (clickjacking), and
    never sending its URL on as a referrer (tracking numbers and review tokens are in it).
    X-Content-Type-Options goes on every response (middleware)."""
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


# Built once: every server-rendered page sends these.
PAGE_HEADERS = html_security_headers(PAGE_CSP)


def page_templates(own_folder: Path) -> Jinja2Templates:
    """Templates of one package, able to extend the shared layout."""
    return Jinja2Templates(directory=[own_folder, SHARED_TEMPLATES])
